// swift-tools-version:6.1
import PackageDescription

// ioatd: a memory-copy offload service. See README.md and protocol/SPEC.md.
//
// Module layering (each depends only on those above it):
//   CIOATRing     protocol/ioatd_ring.h: the ring fast path and its atomics, written once in C.
//   IOATProtocol  pure wire format: types, encode, decode, validation, the server's side of a ring's
//                 memory. No syscalls, no Foundation.
//   CIOATShim     the few C macros and constants Swift cannot import.
//   IOATSystem    the syscall layer: fds, sockets with SCM_RIGHTS, memfds, mappings, epoll, threads.
//   IOATEngine    the engine interface and the CPU engine (ISA-L for CRC32C and XOR).
//   CDPDK, IOATDPDK  the DPDK dmadev engine (I/OAT, DSA, dma_skeleton); compiled only with the `DPDK`
//                 trait (`swift build --traits DPDK`, needs libdpdk-dev); empty otherwise.
//   IOATServer    the broker: connections, buffers, queues, scheduling, completion delivery. It takes a
//                 configuration value, `apply(policy:)` and `requestStop()`; it reads no file and no signal.
//   ioatd         the daemon around it: options, the TOML file and its reload on SIGHUP, signals,
//                 socket activation and sd_notify (libsystemd), answering clients when it cannot start.
//   IOATClient    the client library.
//   IOATConformance  the behaviours every engine must show, run by `ioatctl test` and the tests.
//   IOATTestKit   test support as a product: a fault-injecting engine wrapper and an in-process server.
#if arch(arm64)
let dpdkArchitecture = "aarch64"
#else
let dpdkArchitecture = "x86_64"
#endif

// Release builds of the server (IOATServer) skip the run-time exclusivity checks: they were 10% of the
// server's profile under 64-byte ring traffic, and 64-byte ops ran 1.3x faster without them. Debug
// builds, which every test runs, keep them. The engine's module gained nothing measurable and keeps
// them; the IOATClient product, which other packages depend on, carries no unsafe flag.
let serverHotPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "ioatd",
    products: [
        .executable(name: "ioatd", targets: ["ioatd"]),
        .executable(name: "ioatctl", targets: ["ioatctl"]),
        .library(name: "IOATClient", targets: ["IOATClient"]),
        .library(name: "IOATTestKit", targets: ["IOATTestKit"]),
    ],
    traits: [
        .trait(name: "DPDK", description: "Build the DPDK dmadev engine (ioatd --engine dpdk); needs libdpdk-dev."),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        .target(name: "CIOATShim"),
        .target(name: "CIOATRing"),
        .systemLibrary(name: "CISAL", pkgConfig: "libisal", providers: [.apt(["libisal-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .target(name: "IOATProtocol", dependencies: ["CIOATRing"]),
        .target(name: "IOATSystem", dependencies: ["CIOATShim"]),
        .target(name: "IOATEngine", dependencies: ["IOATProtocol", "IOATSystem", "CISAL"]),
        // Debian's libdpdk.pc cannot be read by SwiftPM (a comment line), so the paths and libraries are
        // spelled out; Swift itself sees only the shim's own header.
        .target(
            name: "CDPDK",
            cSettings: [
                .unsafeFlags(["-I/usr/include/dpdk", "-I/usr/include/\(dpdkArchitecture)-linux-gnu/dpdk"], .when(traits: ["DPDK"])),
            ],
            linkerSettings: [
                .linkedLibrary("rte_eal", .when(traits: ["DPDK"])),
                .linkedLibrary("rte_dmadev", .when(traits: ["DPDK"])),
            ]
        ),
        .target(name: "IOATDPDK", dependencies: ["CDPDK", "IOATEngine", "IOATProtocol", "IOATSystem"]),
        .target(
            name: "IOATServer",
            dependencies: [
                "IOATProtocol", "IOATSystem", "IOATEngine",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: serverHotPath
        ),
        .target(
            name: "IOATClient",
            dependencies: ["IOATProtocol", "IOATSystem", "CIOATRing", .product(name: "DequeModule", package: "swift-collections")]
        ),
        .target(name: "IOATConformance", dependencies: ["IOATClient", "IOATProtocol"]),
        .target(
            name: "IOATTestKit",
            dependencies: [
                "IOATEngine", "IOATServer", "IOATSystem", "IOATProtocol", .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "ioatd",
            dependencies: [
                "IOATServer", "IOATEngine", "IOATDPDK", "IOATSystem", "IOATProtocol", "CSystemd",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]
        ),
        .executableTarget(
            name: "ioatctl",
            dependencies: [
                "IOATClient", "IOATConformance", "IOATEngine", "IOATDPDK", "IOATSystem", "IOATProtocol", "CIOATRing",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Counts malloc calls in the test process (the no-allocation checks of the ring data path).
        .target(name: "CMallocCounter", path: "Tests/CMallocCounter"),
        .testTarget(name: "IOATProtocolTests", dependencies: ["IOATProtocol"]),
        .testTarget(name: "IOATEngineTests", dependencies: ["IOATEngine", "IOATProtocol", "IOATSystem"]),
        // The server's core (state machine, validator, channel, router) driven without sockets.
        .testTarget(
            name: "IOATServerTests",
            dependencies: ["IOATServer", "IOATEngine", "IOATProtocol", "IOATSystem", "IOATConformance",
                           .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "IOATIntegrationTests",
            dependencies: [
                "IOATClient", "IOATConformance", "IOATProtocol", "IOATSystem", "IOATEngine", "IOATServer", "IOATTestKit",
                "IOATDPDK", "CIOATRing", "CMallocCounter",
                "ioatd", "ioatctl",
            ]
        ),
    ]
)
