#!/usr/bin/env python3
"""Fold `perf script -F comm,tid,period,ip,sym,dso` output into stackcollapse format
(root;...;leaf count) and bucket the samples by leaf frame."""
import sys, re, collections
src, out_folded = sys.argv[1], sys.argv[2]
stacks = collections.Counter()
cur = None
def flush(frames):
    if frames is None: return
    frames = [f for f in frames if f != '[unknown]']
    stacks[';'.join(reversed(frames)) if frames else '[unknown]'] += 1
with open(src, errors='replace') as fh:
    frames = None; comm = None
    for line in fh:
        if not line.strip():
            if frames is not None:
                flush(frames)
            frames = None; continue
        if not line.startswith('\t') and not line.startswith(' '):
            comm = line.split()[0]
            frames = []
            continue
        parts = line.strip().split(' ', 1)
        if len(parts) < 2: continue
        rest = parts[1]
        m = re.match(r'(.*) \(([^)]*)\)$', rest)
        sym, dso = (m.group(1), m.group(2)) if m else (rest, '')
        if dso == '[kernel.kallsyms]': sym += '_[k]'
        frames.append(sym)
    if frames is not None: flush(frames)
with open(out_folded, 'w') as fo:
    for k, v in sorted(stacks.items()):
        fo.write(f'{k} {v}\n')
print('samples', sum(stacks.values()), 'unique stacks', len(stacks))
