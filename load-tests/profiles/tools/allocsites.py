"""Summarise sampled allocations: `perf script -F event,trace,ip,sym --no-inline` output of
uprobes on mi_malloc_aligned with a `size` argument (see RESULTS.md). Sizes, owners, call sites."""
import collections,re,sys
blocks=open(sys.argv[1] if len(sys.argv) > 1 else 'script-alloc.txt').read().split('\n\n')
sizes=collections.Counter(); site=collections.Counter(); owner=collections.Counter(); n=0; big=collections.Counter()
def clean(s): return re.sub(r'^\s*[0-9a-f]+ ','',s).strip()
for b in blocks:
    lines=[l for l in b.strip().split('\n') if l.strip()]
    if not lines: continue
    m=re.search(r'size=(0x[0-9a-f]+)',lines[0])
    if not m: continue
    sz=int(m.group(1),16); n+=1
    fr=[clean(l) for l in lines[1:]]
    sizes[sz]+=1
    # nearest interesting frame
    near='?'
    for f in fr[1:]:
        if re.search(r'(portcullis::|pingora_|tokio::)',f) and not f.startswith(('alloc::','core::','<alloc','<core')):
            near=f; break
    # chain of 2 interesting frames
    chain=[f for f in fr[1:] if re.search(r'(portcullis::|pingora_|tokio::|http::|bytes::)',f)][:3]
    site[' <- '.join(x[:110] for x in chain)]+=1
    # owner: portcullis code on the stack below EdgeApp root?
    p=[f for f in fr if 'portcullis::' in f and 'EdgeApp' not in f]
    if p: own='portcullis: '+p[0][:100]
    elif near.startswith('<portcullis::edge::EdgeApp'): own='portcullis: EdgeApp::process_new/read_head (direct)'
    else:
        mm=re.match(r'^<?([a-z_]+)::',near); own='lib: '+(mm.group(1) if mm else near[:60])
    owner[own]+=1
    if sz>=4096: big[(sz, chain[0][:120] if chain else '?')]+=1
print('sampled allocations', n)
print('sizes (bytes: share):', ', '.join(f'{s}:{100*c/n:.1f}%' for s,c in sorted(sizes.items(), key=lambda x:-x[1])[:25]))
print('\nowners:')
for k,v in owner.most_common(25): print(f'  {100*v/n:5.1f}% {k}')
print('\ntop sites:')
for k,v in site.most_common(40): print(f'  {100*v/n:5.1f}% {k}')
print('\nallocations >= 4096 bytes:')
for k,v in big.most_common(10): print(f'  {100*v/n:5.2f}% size={k[0]} {k[1]}')
