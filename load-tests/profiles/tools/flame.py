#!/usr/bin/env python3
"""Minimal flame graph SVG from folded stacks (the format of stackcollapse-perf.pl).
Written for this report because no flamegraph package is in Debian 12's archive.
Colours: kernel=orange, malloc=red, httparse=yellow, pingora http/http crate=blue,
tokio=purple, portcullis=green, other user=grey-aqua. Hover a frame for name and share."""
import sys, html, re
src, out, title = sys.argv[1], sys.argv[2], sys.argv[3]
root = {'n': 0, 'c': {}}
for line in open(src):
    st, k = line.rstrip('\n').rsplit(' ', 1); k = int(k)
    node = root; node['n'] += k
    for f in st.split(';'):
        node = node['c'].setdefault(f, {'n': 0, 'c': {}}); node['n'] += k
total = root['n']
W, FH, PAD = 1600, 16, 10
def depth(n): return 1 + max((depth(c) for c in n['c'].values()), default=0)
D = depth(root)
H = D * FH + 60
def colour(name):
    h = (hash(name) % 40)
    if name.endswith('_[k]'): return f'rgb({220+h//3},{110+h},{40})'
    if re.match(r'^_?mi_|^mi_theap|^__rust_(alloc|dealloc|realloc)|^alloc::alloc', name): return f'rgb({230},{60+h},{60+h})'
    if 'portcullis::' in name: return f'rgb({60+h},{190},{70+h})'
    if name.startswith('httparse'): return f'rgb({230},{210},{60+h})'
    if re.search(r'^<?(pingora_core::protocols::http|pingora_http|http::)', name) or 'HeaderMap' in name: return f'rgb({70+h},{130+h},{230})'
    if re.search(r'^<?(tokio|mio)::', name): return f'rgb({160+h},{100},{210})'
    return f'rgb({110+h},{170+h//2},{170+h//2})'
out_l = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="monospace" font-size="11">',
         f'<rect width="100%" height="100%" fill="#f8f8f8"/>',
         f'<text x="{PAD}" y="20" font-size="15">{html.escape(title)}</text>',
         f'<text x="{PAD}" y="38" font-size="11">{total} samples; width = share of samples; hover for details. kernel=orange malloc=red pingora-http=blue tokio=purple portcullis=green httparse=yellow other=aqua</text>']
scale = (W - 2 * PAD) / total
def draw(name, node, x, d):
    w = node['n'] * scale
    if w < 0.3: return
    y = H - (d + 1) * FH - 4
    if name is not None:
        pct = 100 * node['n'] / total
        label = html.escape(name)
        out_l.append(f'<g><title>{label} ({node["n"]} samples, {pct:.2f}%)</title>'
                     f'<rect x="{x:.2f}" y="{y}" width="{max(w-0.5,0.3):.2f}" height="{FH-1}" fill="{colour(name)}" rx="1"/>')
        chars = int(w / 6.6)
        if chars >= 3:
            t = name if len(name) <= chars else name[:chars-2] + '..'
            out_l.append(f'<text x="{x+2:.2f}" y="{y+FH-4}">{html.escape(t)}</text>')
        out_l.append('</g>')
    cx = x
    for cname, child in sorted(node['c'].items()):
        draw(cname, child, cx, d + (0 if name is None else 1))
        cx += child['n'] * scale
draw(None, root, PAD, 0)
out_l.append('</svg>')
open(out, 'w').write('\n'.join(out_l))
print('wrote', out, 'depth', D, 'bytes', sum(len(s) for s in out_l))
