import Foundation
import IOATProtocol

extension IOATClient {
    /// The server's whole STATUS document (SPEC.md §5.6): every page, the clients and tenants of later
    /// pages appended to the first. A server that does not page (older than paging) answers in one page.
    public func status() async throws(IOATError) -> StatusDocument {
        var document = try await statusPage(.first)
        var seen = 1
        while let next = StatusRequest.after(document.page) {
            // Each page holds at least one entry, so this ends; the bound guards against a server that
            // keeps naming a next page without progress.
            seen += 1
            guard seen <= 1 + document.page.clientsTotal + document.page.tenantsTotal else {
                throw .invalidReply("STATUS kept naming a next page after \(seen - 1) pages")
            }
            document.append(page: try await statusPage(next))
        }
        return document
    }

    /// One page of the STATUS document, decoded.
    public func statusPage(_ page: StatusRequest) async throws(IOATError) -> StatusDocument {
        let json = try await statusJSON(page)
        do {
            return try JSONDecoder().decode(StatusDocument.self, from: Data(json.utf8))
        } catch {
            throw .invalidReply("STATUS document does not decode: \(error)")
        }
    }
}
