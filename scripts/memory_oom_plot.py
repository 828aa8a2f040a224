#!/usr/bin/env python3
"""Draws docs/memory_oom_off.csv and docs/memory_oom_on.csv (scripts/memory_oom.sh) as one SVG:
node 1's RSS over time, monitor off and on, with the limit. Standard library only."""
import csv
import sys

def rows(path):
    with open(path) as f:
        return [(int(r["t_ms"]) / 1000, int(r["rss_bytes"]) / 2**20, int(r["limit_bytes"]) / 2**20) for r in csv.DictReader(f)]

off, on = rows("docs/memory_oom_off.csv"), rows("docs/memory_oom_on.csv")
limit = off[0][2]
W, H, L, B = 640, 360, 60, 40
tmax = max(r[0] for r in off + on)
ymax = max(max(r[1] for r in off + on), limit) * 1.1
x = lambda t: L + (W - L - 20) * t / tmax
y = lambda m: H - B - (H - B - 20) * m / ymax
def line(rs, colour):
    pts = " ".join(f"{x(t):.1f},{y(m):.1f}" for t, m, _ in rs)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>'
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<line x1="{L}" y1="{y(0)}" x2="{W-20}" y2="{y(0)}" stroke="black"/>',
       f'<line x1="{L}" y1="{y(0)}" x2="{L}" y2="20" stroke="black"/>',
       f'<line x1="{L}" y1="{y(limit):.1f}" x2="{W-20}" y2="{y(limit):.1f}" stroke="grey" stroke-dasharray="6,4"/>',
       f'<text x="{W-150}" y="{y(limit)-6:.1f}" fill="grey">limit {limit:.0f} MiB</text>',
       line(off, "#c0392b"), line(on, "#2471a3"),
       f'<text x="{L+10}" y="34" fill="#c0392b">[memory] off</text>',
       f'<text x="{L+10}" y="50" fill="#2471a3">[memory] on (moves to node 2)</text>',
       f'<text x="{W/2-60}" y="{H-8}">time since start, s</text>',
       f'<text x="8" y="14">node 1 RSS, MiB</text>']
for m in range(0, int(ymax), 100):
    out.append(f'<text x="{L-36}" y="{y(m)+4:.1f}">{m}</text>')
for t in range(0, int(tmax) + 1, 2):
    out.append(f'<text x="{x(t)-4:.1f}" y="{H-B+16}">{t}</text>')
out.append("</svg>")
open(sys.argv[1] if len(sys.argv) > 1 else "docs/memory_oom.svg", "w").write("\n".join(out) + "\n")
