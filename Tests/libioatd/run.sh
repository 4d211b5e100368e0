#!/bin/bash
# libioatd end to end (make test-c): install into a staging root, build the examples and the
# conformance program against the installed libioatd.pc, run them against a real ioatd on both
# transports, again under AddressSanitizer + UndefinedBehaviorSanitizer, the examples under valgrind;
# and check the exported symbols against the version script. Every step fails the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
out=$root/.build/libioatd-test
stage=$out/stage
rm -rf "$out"
mkdir -p "$out"
ioatd=$root/.build/debug/ioatd
[ -x "$ioatd" ] || { echo "test-c: $ioatd is missing: run 'make test' (or 'swift build') first"; exit 1; }

step() { echo "---- libioatd: $* ----"; }

step "install into $stage"
make --no-print-directory install-lib DESTDIR="$stage" PREFIX=/usr >/dev/null
export PKG_CONFIG_SYSROOT_DIR=$stage PKG_CONFIG_PATH=$stage/usr/lib/pkgconfig PKG_CONFIG_LIBDIR=$stage/usr/lib/pkgconfig
cflags=$(pkg-config --cflags libioatd)
libs=$(pkg-config --libs libioatd)
echo "pkg-config: $cflags $libs (version $(pkg-config --modversion libioatd))"
export LD_LIBRARY_PATH=$stage/usr/lib

step "ABI: exported symbols = the version script, soname libioatd.so.1"
so=$stage/usr/lib/libioatd.so.1
readelf -d "$so" | grep -q 'SONAME.*\[libioatd\.so\.1\]' || { echo "soname is not libioatd.so.1:"; readelf -d "$so" | grep SONAME; exit 1; }
sed -n '/global:/,/local:/p' libioatd/libioatd.map | grep -o '^ *[a-z_0-9]*;' | tr -d ' ;' | sort > "$out/map.txt"
nm -D --defined-only "$so" | awk '$2 ~ /^[TDBR]$/ {print $3}' | grep -v '^LIBIOATD_' | sed 's/@.*//' | sort > "$out/exported.txt"
if ! diff -u "$out/map.txt" "$out/exported.txt"; then echo "exported symbols differ from libioatd/libioatd.map (- map, + exported)"; exit 1; fi
if nm -D --defined-only "$so" | awk '$2 ~ /^[TDBR]$/' | grep -Ev '@@LIBIOATD_1\.[0123]$' | grep -Ev ' LIBIOATD_1\.[0123]$'; then
    echo "symbols above are not versioned LIBIOATD_1.0 to 1.3"; exit 1
fi
# Symbols of 1.0 keep their version (programs linked against 1.0 keep loading).
dynamic=$(nm -D --defined-only "$so")
for symbol in ioatd_connect ioatd_wait_completion ioat_poll; do
    grep -q " $symbol@@LIBIOATD_1.0$" <<< "$dynamic" || { echo "$symbol is not LIBIOATD_1.0"; exit 1; }
done
for symbol in ioatd_ring_kick ioatd_ring_disarm; do
    grep -q " $symbol@@LIBIOATD_1.2$" <<< "$dynamic" || { echo "$symbol is not LIBIOATD_1.2"; exit 1; }
done
grep -q " ioatd_server_restarts@@LIBIOATD_1.3$" <<< "$dynamic" || { echo "ioatd_server_restarts is not LIBIOATD_1.3"; exit 1; }
echo "$(wc -l < "$out/exported.txt") symbols, versioned LIBIOATD_1.0 to 1.3"

step "the installed headers compile as C++ (g++ and clang++) and as C11"
printf '#include <ioatd/client.h>\n#include <ioatd/ioat.h>\nint main() { return ioatd_err_code(IOATD_ERR(13)) == 13 ? 0 : 1; }\n' > "$out/headers.cc"
for cxx in g++ clang++; do
    command -v $cxx > /dev/null || { echo "$cxx is missing (make deps-test installs it)"; exit 1; }
    $cxx -std=c++17 -Wall -Wextra -Werror $cflags "$out/headers.cc" $libs -o "$out/headers-$cxx"
    "$out/headers-$cxx"
    echo "$cxx: ok"
done

step "build the examples and the conformance program against the installed library"
for example in copy crc32c ioat_test; do
    gcc -std=c11 -Wall -Wextra -Werror $cflags examples/c/$example.c $libs -o "$out/$example"
done
gcc -std=c11 -Wall -Wextra -Werror $cflags Tests/libioatd/conformance.c $libs -o "$out/conformance"
gcc -std=c11 -Wall -Wextra -Werror $cflags Tests/libioatd/ioat_conformance.c $libs -o "$out/ioat_conformance"
gcc -std=c11 -Wall -Wextra -Werror $cflags libioatd/bench.c $libs -o "$out/bench"
gcc -std=c11 -Wall -Wextra -Werror $cflags Tests/libioatd/robustness.c $libs -lpthread -o "$out/robustness"
# The static library too, linked with what pkg-config --static lists.
gcc -std=c11 -Wall -Wextra -Werror $cflags examples/c/copy.c "$stage/usr/lib/libioatd.a" $(pkg-config --static --libs-only-l libioatd | sed 's/-lioatd//') -o "$out/copy-static"
# And under the sanitizers, the library's sources compiled in.
gcc -std=c11 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Wall -Wextra -Werror \
    -Ilibioatd/include -Iprotocol Tests/libioatd/conformance.c libioatd/client.c libioatd/ioat.c libioatd/ring.c -lpthread -o "$out/conformance-asan"
gcc -std=c11 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Wall -Wextra -Werror \
    -Ilibioatd/include -Iprotocol examples/c/ioat_test.c libioatd/client.c libioatd/ioat.c libioatd/ring.c -lpthread -o "$out/ioat_test-asan"
gcc -std=c11 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Wall -Wextra -Werror \
    -Ilibioatd/include -Iprotocol Tests/libioatd/ioat_conformance.c libioatd/client.c libioatd/ioat.c libioatd/ring.c -lpthread -o "$out/ioat_conformance-asan"
gcc -std=c11 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Wall -Wextra -Werror \
    -Ilibioatd/include -Iprotocol Tests/libioatd/robustness.c libioatd/client.c libioatd/ioat.c libioatd/ring.c -lpthread -o "$out/robustness-asan"
gcc -std=c11 -g -O1 -fsanitize=thread -Wno-tsan -Wall -Wextra -Werror \
    -Ilibioatd/include -Iprotocol Tests/libioatd/robustness.c libioatd/client.c libioatd/ioat.c libioatd/ring.c -lpthread -o "$out/robustness-tsan"
gcc -std=c11 -g -O1 -fsanitize=thread -Wno-tsan -Wall -Wextra -Werror \
    -Ilibioatd/include -Iprotocol Tests/libioatd/ring_threads.c libioatd/ring.c -lpthread -o "$out/ring_threads-tsan"

step "start ioatd (CPU engine)"
sock=/tmp/ioatd-libtest-$$.sock
"$ioatd" --socket "$sock" --engine cpu --log-level warning > "$out/ioatd.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$sock"' EXIT
# Wait for the condition (a server that answers), not for a guessed time.
for _ in $(seq 1 300); do
    "$out/copy" "$sock" > /dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { echo "ioatd exited:"; cat "$out/ioatd.log"; exit 1; }
    sleep 0.1
done
"$out/copy" "$sock"
"$out/copy-static" "$sock"

step "conformance through the C library, both transports, and through <ioatd/ioat.h>"
"$out/conformance" "$sock" ring
"$out/conformance" "$sock" socket
IOATD_SOCKET=$sock "$out/ioat_conformance"

step "robustness: bounded waits, texts, connection loss, NULLs, threads, kill -9 and restart (issue 19)"
"$out/robustness" "$ioatd"

step "the same under AddressSanitizer + UndefinedBehaviorSanitizer"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 "$out/conformance-asan" "$sock" ring
ASAN_OPTIONS=detect_leaks=1 "$out/conformance-asan" "$sock" socket
IOATD_SOCKET=$sock ASAN_OPTIONS=detect_leaks=1 "$out/ioat_test-asan"
IOATD_SOCKET=$sock ASAN_OPTIONS=detect_leaks=1 "$out/ioat_conformance-asan"
ASAN_OPTIONS=detect_leaks=1 "$out/robustness-asan" "$ioatd"

step "ioatd_ring.h's thread contract under ThreadSanitizer: one thread submits, another reaps"
TSAN_OPTIONS=halt_on_error=1 setarch "$(uname -m)" -R "$out/ring_threads-tsan"

step "robustness under ThreadSanitizer (the pollers, the shared client)"
TSAN_OPTIONS=halt_on_error=1 setarch "$(uname -m)" -R "$out/robustness-tsan" "$ioatd"

step "examples: crc32c prints what ioatctl crc32c prints"
IOATD_SOCKET=$sock "$out/crc32c" README.md protocol/SPEC.md /dev/null > "$out/crc-c.txt"
IOATD_SOCKET=$sock "$root/.build/debug/ioatctl" crc32c README.md protocol/SPEC.md /dev/null > "$out/crc-swift.txt"
diff -u "$out/crc-swift.txt" "$out/crc-c.txt"
cat "$out/crc-c.txt"
printf '123456789' > "$out/vector.txt"
grep -q '^e3069283  ' <(IOATD_SOCKET=$sock "$out/crc32c" "$out/vector.txt") || { echo "crc32c of 123456789 is not e3069283"; exit 1; }

step "examples under valgrind"
for run in "copy $sock" "crc32c README.md" "ioat_test"; do
    IOATD_SOCKET=$sock valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        --track-fds=yes "$out"/$run > "$out/valgrind.txt" 2>&1 || { cat "$out/valgrind.txt"; echo "valgrind: $run"; exit 1; }
    # --track-fds lists each descriptor open at exit; those the program opened itself are leaks (the
    # ones it inherited, from make or the shell, are not).
    leaked=$(awk '/==[0-9]+== Open .* [0-9]+:/ {open=1; next} open && /inherited from parent/ {open=0; next} open {n++; open=0} END {print n+0}' "$out/valgrind.txt")
    if [ "$leaked" != 0 ]; then cat "$out/valgrind.txt"; echo "valgrind: $run left $leaked descriptors open"; exit 1; fi
    echo "valgrind clean: $run"
done

kill -0 $server || { echo "ioatd died during the C tests:"; cat "$out/ioatd.log"; exit 1; }
echo "---- libioatd: all passed ----"
