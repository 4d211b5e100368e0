import Foundation
import IOATEngine
import IOATProtocol
@testable import IOATServer
import IOATSystem
import Logging
import Testing

@Suite("STATUS pages fit one message with any number of tenants (SPEC.md §5.6)")
struct StatusPagingTests {
    @Test("1,000 tenants with 10,000 buffers: every page fits max_message, and the pages list everyone once")
    func thousandTenants() throws {
        let path = "/tmp/ioatd-status-paging-\(getpid()).sock"
        defer { unlink(path) }
        let server = try IOATServer(configuration: ServerConfiguration(socketPath: path),
                                    engine: try CPUEngine(channelCount: 2, busyPollMicroseconds: 0), logger: Logger(label: "status-paging"))
        // One mapping shared by every buffer, and one descriptor by every connection: what STATUS reads is
        // the tables, not the memory.
        let mapping = try Mapping(fd: try Memfd.create(name: "status-paging", size: 4096, hugepages: false), length: 4096,
                                  writable: true, populate: false)
        let fd = try EventFD().fd
        for uid in UInt32(1)...1000 {
            // Half the tenants are uids, half are units whose processes all run as root (containers): the
            // pages go by tenant id, so tenants sharing a uid are each listed once.
            let tenant: Tenant
            if uid % 2 == 0 {
                tenant = Tenant(key: .unit("ctr-\(uid).scope"), id: uid, identity: PeerCredentials(pid: Int32(uid), uid: 0, gid: 0),
                                limits: TenantLimits(), policySource: "units ctr-*.scope", seesAll: false)
            } else {
                tenant = Tenant(uid: uid, gid: uid, groups: [uid, 4242], limits: TenantLimits(), policySource: "test")
            }
            server.tenants[tenant.key] = tenant
            let connection = Connection(id: UInt64(uid) + 16, fd: fd, peer: PeerCredentials(pid: Int32(uid), uid: uid, gid: uid),
                                        tenant: tenant, maxMessage: 4096, now: 0)
            for b in UInt32(0)..<10 {
                let buffer = SharedBuffer(handle: uid * 10 + b, mapping: mapping, flags: [], pageSize: 4096, registration: nil)
                connection.add(OpenBuffer(buffer, slot: server.bufferTable.insert(buffer)))
            }
            server.connections[connection.id] = connection
        }
        var page = StatusRequest.first
        var clients: [UInt64] = []
        var tenants: [UInt32] = []
        var pages = 0
        while true {
            pages += 1
            try #require(pages <= 100, "paging does not end")
            let json = server.statusJSON(page: page)
            #expect(Wire.headerSize + json.utf8.count <= Wire.defaultMaxMessage, "page \(pages): \(json.utf8.count) bytes")
            let document = try JSONDecoder().decode(StatusDocument.self, from: Data(json.utf8))
            #expect(document.buffers.count == 10_000 && document.page.clientsTotal == 1000 && document.page.tenantsTotal == 1000)
            #expect(document.channels.count == 2)
            #expect(!document.clients.isEmpty || !document.tenants.isEmpty, "page \(pages) holds nothing")
            clients += document.clients.map(\.id)
            tenants += document.tenants.compactMap(\.id)
            guard let next = StatusRequest.after(document.page) else { break }
            page = next
        }
        #expect(clients == (1...1000).map { UInt64($0) + 16 }, "every client once, in order")
        #expect(tenants == Array(UInt32(1)...1000), "every tenant once, in order of id, root's many units included")
        #expect(pages > 2, "the document did not need paging: \(pages) pages")
        // A viewer that is not root sees itself only, on one page; so does a unit's, although it runs as root.
        let own = server.statusDocument(for: server.connections[77 + 16])
        #expect(own.clients.map(\.uid) == [77] && own.tenants.map(\.uid) == [77] && own.page.isLast && own.buffers.count == 10)
        let unit = server.statusDocument(for: server.connections[78 + 16])
        #expect(unit.clients.map(\.id) == [78 + 16] && unit.tenants.map(\.name) == ["ctr-78.scope"] && unit.page.isLast)
    }
}
