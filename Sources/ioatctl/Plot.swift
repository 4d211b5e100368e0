import Foundation

/// An SVG chart of `ioatctl bench` figures, drawn here so nothing is needed on the server host: throughput
/// against transfer size on log axes, one line per op and side (baseline, ioatd, each --beside server),
/// and the ratio to the baseline in a second panel. Each line is a `<polyline>` whose `data-series` names
/// it ("copy baseline", "copy cpu", "ratio copy cpu").
struct Plot {
    /// One line: its name, the op (for its colour), its style, and (size, value) points.
    struct Series {
        var name: String
        var op: String
        var dash: String
        var points: [(size: Int, value: Double)]
    }

    var title: String
    var throughput: [Series]
    var ratios: [Series]

    static let colours = ["copy": "#1f77b4", "fill": "#2ca02c", "crc32c": "#d62728"]

    func svg() -> String {
        let width = 860.0, left = 70.0, right = 190.0, top = 40.0
        let panel1 = (y: top, height: 300.0), panel2 = (y: top + 300 + 60, height: 160.0)
        let height = panel2.y + panel2.height + 50
        let plotWidth = width - left - right
        let sizes = Set((throughput + ratios).flatMap { $0.points.map(\.size) }).sorted()
        let minSize = Double(sizes.first ?? 1), maxSize = Double(max(sizes.last ?? 2, (sizes.first ?? 1) * 2))
        func x(_ size: Int) -> Double { left + (log2(Double(size)) - log2(minSize)) / (log2(maxSize) - log2(minSize)) * plotWidth }
        let values = throughput.flatMap { $0.points.map(\.value) }.filter { $0 > 0 }
        let lo = pow(10, floor(log10(values.min() ?? 0.1))), hi = pow(10, ceil(log10(values.max() ?? 10)))
        func y1(_ v: Double) -> Double {
            panel1.y + panel1.height - (log10(max(v, lo)) - log10(lo)) / max(1e-9, log10(hi) - log10(lo)) * panel1.height
        }
        let ratioMax = max(1.2, (ratios.flatMap { $0.points.map(\.value) }.max() ?? 1) * 1.1)
        func y2(_ v: Double) -> Double { panel2.y + panel2.height - min(v, ratioMax) / ratioMax * panel2.height }

        var out = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(left)" y="22" font-size="15">\(Self.escape(title))</text>

            """
        // Axes and grid.
        for (y, label) in stride(from: log10(lo), through: log10(hi), by: 1).map({ (y1(pow(10, $0)), Self.number(pow(10, $0))) }) {
            out += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + plotWidth)\" y2=\"\(y)\" stroke=\"#ddd\"/>"
            out += "<text x=\"\(left - 6)\" y=\"\(y + 4)\" text-anchor=\"end\">\(label)</text>\n"
        }
        for fraction in stride(from: 0.0, through: ratioMax, by: ratioMax > 2 ? 0.5 : 0.25) {
            let y = y2(fraction)
            out += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + plotWidth)\" y2=\"\(y)\" stroke=\"\(fraction == 1 ? "#999" : "#ddd")\"/>"
            out += "<text x=\"\(left - 6)\" y=\"\(y + 4)\" text-anchor=\"end\">\(Self.number(fraction))</text>\n"
        }
        for size in sizes {
            for (panelTop, panelHeight) in [panel1, panel2] {
                out += "<line x1=\"\(x(size))\" y1=\"\(panelTop)\" x2=\"\(x(size))\" y2=\"\(panelTop + panelHeight)\" stroke=\"#eee\"/>"
                out += "<text x=\"\(x(size))\" y=\"\(panelTop + panelHeight + 16)\" text-anchor=\"middle\">\(Self.sizeLabel(size))</text>\n"
            }
        }
        out += "<text x=\"18\" y=\"\(panel1.y + panel1.height / 2)\" transform=\"rotate(-90 18 \(panel1.y + panel1.height / 2))\" text-anchor=\"middle\">GB/s (log)</text>\n"
        out += "<text x=\"18\" y=\"\(panel2.y + panel2.height / 2)\" transform=\"rotate(-90 18 \(panel2.y + panel2.height / 2))\" text-anchor=\"middle\">ratio to baseline</text>\n"
        out += "<text x=\"\(left + plotWidth / 2)\" y=\"\(height - 10)\" text-anchor=\"middle\">transfer size (log)</text>\n"
        for (panelTop, panelHeight) in [panel1, panel2] {
            out += "<rect x=\"\(left)\" y=\"\(panelTop)\" width=\"\(plotWidth)\" height=\"\(panelHeight)\" fill=\"none\" stroke=\"#333\"/>\n"
        }
        // Lines, then the legend.
        func draw(_ series: Series, _ y: (Double) -> Double) {
            let colour = Self.colours[series.op] ?? "#555"
            let points = series.points.sorted { $0.size < $1.size }.map { "\(x($0.size)),\(y($0.value))" }.joined(separator: " ")
            out += "<polyline data-series=\"\(Self.escape(series.name))\" points=\"\(points)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"2\""
                + (series.dash.isEmpty ? "" : " stroke-dasharray=\"\(series.dash)\"") + "/>\n"
            for p in series.points { out += "<circle cx=\"\(x(p.size))\" cy=\"\(y(p.value))\" r=\"2.5\" fill=\"\(colour)\"/>" }
            out += "\n"
        }
        for s in throughput { draw(s, y1) }
        for s in ratios { draw(s, y2) }
        for (i, s) in throughput.enumerated() {
            let y = panel1.y + 10 + Double(i) * 18
            let colour = Self.colours[s.op] ?? "#555"
            out += "<line x1=\"\(width - right + 12)\" y1=\"\(y)\" x2=\"\(width - right + 40)\" y2=\"\(y)\" stroke=\"\(colour)\" stroke-width=\"2\""
                + (s.dash.isEmpty ? "" : " stroke-dasharray=\"\(s.dash)\"") + "/>"
            out += "<text x=\"\(width - right + 46)\" y=\"\(y + 4)\">\(Self.escape(s.name))</text>\n"
        }
        return out + "</svg>\n"
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    static func number(_ v: Double) -> String { v >= 1 && v == v.rounded() ? "\(Int(v))" : String(format: "%g", v) }

    static func sizeLabel(_ size: Int) -> String {
        size >= 1 << 20 && size % (1 << 20) == 0 ? "\(size >> 20)M" : size >= 1 << 10 && size % (1 << 10) == 0 ? "\(size >> 10)K" : "\(size)"
    }
}
