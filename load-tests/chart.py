#!/usr/bin/env python3
"""Draw the results of load-tests/compare.sh as an SVG chart.

usage: chart.py RESULTS.json OUT.svg

Grouped bars, one bar per proxy:
  1. median req/s relative to nginx in the same scenario, per closed-loop scenario (plain,
     chain, composite), with the line at 1.0 and the chain's target (0.95);
  2. median p99 latency in ms, per closed-loop scenario;
  3. when open_loop ran: its median p50, p99 and p99.9 at the fixed rate, on their own axis.
Bars far above the others (over 6x the panel's median) are cut, marked and labelled.
Python 3 standard library only; the SVG is written by hand.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

COLORS = {
    "nginx": "#2e8b57",
    "haproxy": "#3b6fb6",
    "pingap": "#e08a1e",
    "portcullis": "#7b3fa0",
}
FALLBACK_COLORS = ["#888888", "#b04040", "#40a0a0", "#a0a040"]
CLOSED_LOOP = ["plain", "chain", "composite"]
TARGETS = {"plain": 1.0, "chain": 0.95}  # portcullis req/s relative to nginx (issue 8)
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"

WIDTH = 960
MARGIN_L, MARGIN_R = 70, 30
PANEL_H = 230


def fmt_ratio(v):
    return f"{v:.2f}"


def fmt_ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def nice_max(v):
    """The smallest round axis maximum (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^k) at or above v."""
    if v <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= m * scale * (1 + 1e-9):
            return m * scale
    return 10 * scale


def tick_values(top):
    """Ticks at round steps: the number of divisions follows the leading digits of top."""
    lead = top / 10.0 ** math.floor(math.log10(top))
    n = {1: 5, 1.2: 6, 1.5: 5, 2: 4, 2.5: 5, 3: 6, 4: 4, 5: 5, 6: 6, 8: 4}.get(round(lead, 1), 5)
    return [top * i / n for i in range(n + 1)]


class Svg:
    def __init__(self):
        self.parts = []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", fill="#222"):
        self.add(
            f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' "
            f"font-weight='{weight}' fill='{fill}' {FONT}>{escape(str(s))}</text>"
        )

    def line(self, x1, y1, x2, y2, stroke="#ccc", width=1, dash=None):
        d = f" stroke-dasharray='{dash}'" if dash else ""
        self.add(
            f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' "
            f"stroke='{stroke}' stroke-width='{width}'{d}/>"
        )

    def rect(self, x, y, w, h, fill, title=None):
        t = f"<title>{escape(title)}</title>" if title else ""
        self.add(
            f"<rect x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' height='{h:.1f}' fill='{fill}'>{t}</rect>"
        )


def panel(svg, top, title, scenarios, proxies, value_of, label_of, unit_fmt, ref_lines, skipped_of):
    """One grouped-bar panel. value_of(sc, px) -> float or None."""
    x0, x1 = MARGIN_L, WIDTH - MARGIN_R
    y_top, y_bot = top + 28, top + PANEL_H
    svg.text(x0, top + 14, title, size=14, weight="bold")
    values = [v for sc in scenarios for px in proxies if (v := value_of(sc, px)) is not None]
    # One huge outlier (a proxy that cannot keep up with the open-loop rate) would flatten
    # every other bar: the axis stops at 6x the median value, and taller bars are cut
    # (drawn with a break mark and their real value).
    med = sorted(values)[len(values) // 2] if values else 0.0
    shown = [v for v in values if med <= 0 or v <= 6 * med]
    vmax = max(shown + [r[0] for r in ref_lines] + [0.0])
    ymax = nice_max(vmax * 1.12)

    def y_of(v):
        return y_bot - (y_bot - y_top) * (v / ymax)

    for t in tick_values(ymax):
        y = y_of(t)
        svg.line(x0, y, x1, y, stroke="#e6e6e6")
        svg.text(x0 - 6, y + 4, unit_fmt(t), size=11, anchor="end", fill="#555")
    svg.line(x0, y_bot, x1, y_bot, stroke="#999")

    if not scenarios:
        svg.text((x0 + x1) / 2, (y_top + y_bot) / 2, "no data", anchor="middle", fill="#888")
        return
    group_w = (x1 - x0) / len(scenarios)
    bar_w = min(46.0, group_w * 0.8 / max(1, len(proxies)))
    for gi, sc in enumerate(scenarios):
        gx = x0 + gi * group_w
        bars_w = bar_w * len(proxies)
        bx0 = gx + (group_w - bars_w) / 2
        for pi, px in enumerate(proxies):
            bx = bx0 + pi * bar_w
            v = value_of(sc, px)
            if v is None:
                reason = skipped_of(sc, px)
                svg.add(f"<g><title>{escape(px + ': ' + (reason or 'not measured'))}</title>")
                svg.text(bx + bar_w / 2, y_bot - 4, "–", size=12, anchor="middle", fill="#999")
                svg.add("</g>")
                continue
            cut = v > ymax
            y = y_of(min(v, ymax))
            svg.rect(bx + 2, y, bar_w - 4, y_bot - y, color_of(px, proxies), title=f"{px} {sc}: {label_of(sc, px)}")
            if cut:  # break mark: a white zigzag across the bar
                ym = y + 10
                svg.add(
                    f"<polyline points='{bx + 1:.1f},{ym + 3:.1f} {bx + bar_w / 3:.1f},{ym - 3:.1f} "
                    f"{bx + 2 * bar_w / 3:.1f},{ym + 3:.1f} {bx + bar_w - 1:.1f},{ym - 3:.1f}' "
                    f"fill='none' stroke='white' stroke-width='3'/>"
                )
            svg.text(bx + bar_w / 2, y - 4, unit_fmt(v) + (" ↑" if cut else ""), size=10, anchor="middle",
                     fill="#333", weight="bold" if cut else "normal")
        # per-group reference lines (targets)
        for ref_v, ref_label, ref_sc in ref_lines:
            if ref_sc is not None and ref_sc == sc:
                y = y_of(ref_v)
                svg.line(bx0 - 4, y, bx0 + bars_w + 4, y, stroke="#c0392b", width=1.5, dash="5,3")
                svg.text(bx0 + bars_w + 6, y + 4, ref_label, size=10, fill="#c0392b")
        svg.text(gx + group_w / 2, y_bot + 18, sc, size=12, anchor="middle", weight="bold")
    for ref_v, ref_label, ref_sc in ref_lines:
        if ref_sc is None:
            y = y_of(ref_v)
            svg.line(x0, y, x1, y, stroke="#555", width=1, dash="2,3")
            svg.text(x1, y - 4, ref_label, size=10, anchor="end", fill="#555")


def color_of(px, proxies):
    if px in COLORS:
        return COLORS[px]
    return FALLBACK_COLORS[proxies.index(px) % len(FALLBACK_COLORS)]


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        data = json.load(f)
    scs = data.get("scenarios", {})
    proxies = [p for p in data.get("proxies", []) if any(p in s.get("results", {}) for s in scs.values())]

    def res(sc, px):
        return scs.get(sc, {}).get("results", {}).get(px)

    def skipped_of(sc, px):
        return scs.get(sc, {}).get("skipped", {}).get(px) or scs.get(sc, {}).get("skipped", {}).get("*")

    closed = [sc for sc in CLOSED_LOOP if sc in scs and scs[sc].get("results")]
    every = [sc for sc in scs if scs[sc].get("results")]

    def ratio_of(sc, px):
        r = res(sc, px)
        return None if r is None or r.get("ratio_rps") is None else float(r["ratio_rps"])

    def ratio_label(sc, px):
        r = res(sc, px)
        return f"{r['ratio_rps']:.3f} x nginx, {r['median']['rps']:.0f} req/s"

    def p99_of(sc, px):
        r = res(sc, px)
        return None if r is None or r["median"]["p99_ms"] < 0 else float(r["median"]["p99_ms"])

    def p99_label(sc, px):
        r = res(sc, px)["median"]
        return f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, p99.9 {r['p999_ms']:.3f} ms"

    svg = Svg()
    svg.text(MARGIN_L, 26, "nginx vs HAProxy vs Pingap vs portcullis: one worker each, same upstream",
             size=16, weight="bold")
    st = data.get("settings", {})
    sub = (f"{data.get('generated', '')}  ·  rounds: {st.get('rounds', '?')} × {st.get('duration_s', '?')} s, "
           f"{st.get('connections', '?')} connections, medians" + ("  ·  quick mode" if data.get("quick") else ""))
    svg.text(MARGIN_L, 44, sub, size=11, fill="#555")
    svg.text(MARGIN_L, 59, data.get("machine", ""), size=10, fill="#777")

    # legend
    lx = MARGIN_L
    for px in proxies:
        svg.rect(lx, 70, 12, 12, color_of(px, proxies))
        label = px
        svg.text(lx + 16, 80, label, size=12)
        lx += 24 + 7.5 * len(label) + 20
    y = 92

    targets = [(1.0, "nginx = 1.0", None)]
    targets += [(v, f"target {v:.2f}", sc) for sc, v in TARGETS.items() if sc in closed and sc != "plain"]
    panel(svg, y, "req/s relative to nginx (median; higher is better)", closed, proxies,
          ratio_of, ratio_label, fmt_ratio, targets, skipped_of)
    y += PANEL_H + 40
    panel(svg, y, "p99 latency, ms (median; lower is better)", closed, proxies,
          p99_of, p99_label, fmt_ms, [], skipped_of)
    y += PANEL_H + 40
    if "open_loop" in every:
        # Open loop on its own axis: its latencies include queueing at a fixed rate and are
        # not comparable with the closed-loop ones. Groups: p50, p99, p99.9.
        keys = {"p50": "p50_ms", "p99": "p99_ms", "p99.9": "p999_ms"}

        def ol_of(metric, px):
            r = res("open_loop", px)
            v = None if r is None else r["median"][keys[metric]]
            return None if v is None or v < 0 else float(v)

        def ol_label(metric, px):
            r = res("open_loop", px)
            return f"{metric} {r['median'][keys[metric]]:.3f} ms at {r['median']['rps']:.0f} req/s achieved"

        rate = st.get("open_loop_rate")
        panel(svg, y, f"open loop at a fixed {rate} req/s (oha --latency-correction): latency, ms (lower is better)",
              list(keys), proxies, ol_of, ol_label, fmt_ms, [],
              lambda metric, px: skipped_of("open_loop", px))
        y += PANEL_H + 40
    y -= 6

    notes = []
    if "chain" in scs:
        notes.append("chain: JWT HS256 + local rate limit; nginx OSS has no JWT, so its bar is a plain proxy (target: portcullis ≥ 0.95× nginx plain).")
    if "composite" in scs:
        notes.append("composite: portcullis fans out to three parts; HAProxy and Pingap cannot aggregate; nginx's bar is one plain call.")
    if "open_loop" in scs and st.get("open_loop_rate"):
        notes.append("open_loop: " + (scs["open_loop"].get("note") or
                     f"oha --latency-correction at {st['open_loop_rate']} req/s ({st.get('open_loop_rate_source', '')})."))
    skipped = set()
    for sc, s in scs.items():
        for px, why in s.get("skipped", {}).items():
            skipped.add(f"{px if px != '*' else 'all proxies'} in {sc}: {why}")
    if skipped:
        notes.append("skipped: " + "; ".join(sorted(skipped)))
    for n in (line for note in notes for line in note.splitlines()):
        # crude wrapping at ~150 characters
        while n:
            at = n.rfind(" ", 0, 150)
            cut = n if len(n) <= 150 else n[: at if at > 0 else 150]
            svg.text(MARGIN_L, y, cut, size=10, fill="#444")
            y += 14
            n = n[len(cut):].lstrip()
    height = y + 10

    out = [
        "<?xml version='1.0' encoding='UTF-8'?>",
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' viewBox='0 0 {WIDTH} {height}'>",
        f"<rect x='0' y='0' width='{WIDTH}' height='{height}' fill='white'/>",
        *svg.parts,
        "</svg>",
    ]
    with open(argv[2], "w") as f:
        f.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
