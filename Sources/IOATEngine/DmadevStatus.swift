import IOATProtocol

/// DPDK's `enum rte_dma_status_code` (rte_dmadev.h, DPDK 22.11), and how each value maps onto ioatd's
/// one status vocabulary (SPEC.md §6.5). Kept here, free of DPDK, so the mapping is tested in every
/// build; the DPDK shim checks these numbers against DPDK's header at compile time.
public enum DmadevStatus: UInt32, CaseIterable, Sendable {
    case successful = 0
    case userAbort = 1
    case notAttempted = 2
    case invalidSourceAddress = 3
    case invalidDestinationAddress = 4
    case invalidAddress = 5
    case invalidLength = 6
    case invalidOpcode = 7
    case busReadError = 8
    case busWriteError = 9
    case busError = 10
    case dataPoison = 11
    case descriptorReadError = 12
    case deviceLinkError = 13
    case pageFault = 14
    case errorUnknown = 0x100

    /// DPDK's name for the value.
    public var name: String {
        switch self {
        case .successful: "RTE_DMA_STATUS_SUCCESSFUL"
        case .userAbort: "RTE_DMA_STATUS_USER_ABORT"
        case .notAttempted: "RTE_DMA_STATUS_NOT_ATTEMPTED"
        case .invalidSourceAddress: "RTE_DMA_STATUS_INVALID_SRC_ADDR"
        case .invalidDestinationAddress: "RTE_DMA_STATUS_INVALID_DST_ADDR"
        case .invalidAddress: "RTE_DMA_STATUS_INVALID_ADDR"
        case .invalidLength: "RTE_DMA_STATUS_INVALID_LENGTH"
        case .invalidOpcode: "RTE_DMA_STATUS_INVALID_OPCODE"
        case .busReadError: "RTE_DMA_STATUS_BUS_READ_ERROR"
        case .busWriteError: "RTE_DMA_STATUS_BUS_WRITE_ERROR"
        case .busError: "RTE_DMA_STATUS_BUS_ERROR"
        case .dataPoison: "RTE_DMA_STATUS_DATA_POISION"
        case .descriptorReadError: "RTE_DMA_STATUS_DESCRIPTOR_READ_ERROR"
        case .deviceLinkError: "RTE_DMA_STATUS_DEV_LINK_ERROR"
        case .pageFault: "RTE_DMA_STATUS_PAGE_FAULT"
        case .errorUnknown: "RTE_DMA_STATUS_ERROR_UNKNOWN"
        }
    }

    /// The ioatd status for this dmadev status. Values that do not say which side failed (an address
    /// or a bus error of unknown direction) and errors of the device itself become ENGINE_ERROR rather
    /// than a guess.
    public var completionStatus: CompletionStatus {
        switch self {
        case .successful: .success
        case .userAbort: .userAbort
        case .notAttempted: .notAttempted
        case .invalidSourceAddress: .invalidSourceAddress
        case .invalidDestinationAddress: .invalidDestinationAddress
        case .invalidLength: .invalidLength
        case .invalidOpcode: .invalidOpcode
        case .busReadError: .busReadError
        case .busWriteError: .busWriteError
        case .dataPoison: .dataPoison
        case .pageFault: .pageFault
        case .invalidAddress, .busError, .descriptorReadError, .deviceLinkError, .errorUnknown: .engineError
        }
    }

    /// The ioatd status for a raw value from `rte_dma_completed_status`; values DPDK adds later are
    /// engine errors.
    public static func completionStatus(raw: UInt32) -> CompletionStatus {
        DmadevStatus(rawValue: raw)?.completionStatus ?? .engineError
    }
}
