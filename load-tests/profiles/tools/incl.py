"""Inclusive share of portcullis code in folded stacks: Gateway callbacks, and EdgeApp work
outside Pingora's process_new_http (its own read, timers, session set-up)."""
import collections,sys
fn=sys.argv[1]
st=[]; tot=0
for l in open(fn):
    s,k=l.rsplit(' ',1); k=int(k); tot+=k; st.append((s.split(';'),k))
gw=collections.Counter(); edge=collections.Counter(); gwt=0; edget=0
for fr,k in st:
    idx=[i for i,f in enumerate(fr) if ('portcullis::' in f and 'EdgeApp' not in f and 'drop_in_place<pingora_proxy' not in f and 'drop_in_place<<pingora_proxy' not in f)]
    if idx:
        gwt+=k; i=idx[0]; gw[fr[i][:110]]+=k; continue
    e=[i for i,f in enumerate(fr) if 'portcullis::edge::EdgeApp' in f]
    if e:
        i=e[-1]
        callee=fr[i+1] if i+1<len(fr) else '(self)'
        if 'HttpServerApp>::process_new_http' in callee: continue
        leaf=fr[-1]; chain=';'.join(fr[i+1:])
        if 'EventedFd' in chain or 'sys_recvfrom' in chain or '__libc_recv' in chain or 'poll_read' in chain: cat='downstream read (recvfrom + tokio/pingora read path)'
        elif 'Sleep' in chain or 'timeout' in chain.lower() or 'time::' in chain or 'sys_write' in chain or 'Waker::wake' in chain: cat='tokio timer (timeout_at/Sleep, re-arm + eventfd write)'
        elif 'httparse' in chain or 'check_head' in chain: cat='check_head (httparse, 128-slot header array)'
        elif 'HttpSession::new' in chain or 'ServerSession' in chain or 'new_http1' in chain: cat='ServerSession::new_http1'
        elif 'memmove' in leaf or 'memset' in leaf: cat='memcpy (moving the ~14 KB process_new_http future / session)'
        elif leaf.startswith(('mi_','_mi_')): cat='malloc/free'
        elif 'shutdown' in chain.lower() or 'watch' in chain: cat='shutdown watch clone/poll'
        else: cat='other: '+ (fr[i+1][:80] if i+1<len(fr) else 'self')
        edge[cat]+=k; edget+=k
print(f'{fn}: {tot} samples')
print(f'Gateway (ProxyHttp callbacks), upstream selection, routing, header hygiene, inclusive: {100*gwt/tot:.2f}%')
for a,b in gw.most_common(12): print(f'   {100*b/tot:5.2f}  {a}')
print(f'EdgeApp work outside pingora process_new_http, inclusive: {100*edget/tot:.2f}%')
for a,b in edge.most_common(12): print(f'   {100*b/tot:5.2f}  {a}')
