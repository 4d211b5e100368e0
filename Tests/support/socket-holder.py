#!/usr/bin/env python3
"""Plays systemd's part for the restart tests: holds a listening SOCK_SEQPACKET socket (like
ioatd.socket) and runs ioatd with it (sd_listen_fds protocol: fd 3, LISTEN_FDS, LISTEN_PID,
LISTEN_FDNAMES), starting it again when it dies abnormally (like Restart=on-failure).

Usage: socket-holder.py SOCKET_PATH -- COMMAND ARGS...
Prints "listening", then "child PID" for every start, and "exit STATUS" when a child ends.
SIGTERM is forwarded to the child; the holder exits when a child exits cleanly (status 0).
"""
import os
import signal
import socket
import sys
import time

path = sys.argv[1]
command = sys.argv[sys.argv.index("--") + 1:]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
listener.bind(path)
listener.listen(128)
print("listening", flush=True)
child = 0
stopping = False


def forward(signum, frame):
    global stopping
    stopping = True
    if child:
        os.kill(child, signum)


signal.signal(signal.SIGTERM, forward)
while True:
    child = os.fork()
    if child == 0:
        os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)
        env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="ioatd")
        os.execve(command[0], command, env)
    print(f"child {child}", flush=True)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    print(f"exit {code}", flush=True)
    if code == 0 or stopping:
        sys.exit(0 if code == 0 else 1)
    time.sleep(0.1)
