#!/usr/bin/env python3
"""Bucket folded stacks (self time by leaf frame; kernel leaves split by call context)."""
import sys, re, collections
fn = sys.argv[1]
stacks = []
for l in open(fn):
    st, k = l.rsplit(' ', 1); stacks.append((st.split(';'), int(k)))
tot = sum(k for _, k in stacks)

def K(f): return f.endswith('_[k]')
def has(fr, *names): return any(f[:-4] in names for f in fr if K(f))
def anyk(fr, pred): return any(K(f) and pred(f[:-4]) for f in fr)

ALLOC = re.compile(r'^(_?mi_|mi_theap|_mi_|__rust_alloc|__rust_dealloc|__rust_realloc|__rdl_|__rg_|malloc|free|cfree|realloc|calloc|_int_malloc|_int_free|alloc::alloc::)')
def bucket(fr):
    leaf = fr[-1]
    if K(leaf):
        if anyk(fr, lambda s: s in ('sock_def_readable','try_to_wake_up','ttwu_do_activate','__wake_up_sync_key','__wake_up_common','ep_poll_callback','sock_def_wakeup','tcp_data_ready')) and not has(fr,'__sys_recvfrom'):
            return 'kernel: socket data-ready wake-up section (sock_def_readable, IRQs off)'
        if anyk(fr, lambda s: s in ('__schedule','schedule','finish_task_switch','finish_task_switch.isra.0','schedule_hrtimeout_range','do_epoll_wait','ep_poll','__x64_sys_epoll_wait')):
            return 'kernel: epoll_wait / scheduling'
        if has(fr, '__x64_sys_write', 'ksys_write', 'eventfd_write'):
            return 'kernel: write(eventfd) = tokio timer re-arm wake (portcullis edge idle timer)'
        if has(fr, '__sys_getpeername', '__x64_sys_getpeername'):
            return 'kernel: getpeername (pingora pool fd check)'
        if has(fr, 'tcp_sendmsg', '__sys_sendto'):
            return 'kernel: TCP send path (sendto, incl. loopback delivery softirq)'
        if has(fr, 'tcp_recvmsg', '__sys_recvfrom'):
            return 'kernel: TCP receive path (recvfrom)'
        if anyk(fr, lambda s: s.startswith(('asm_sysvec','sysvec_','irq_','handle_softirqs','__irq_exit','asm_common_interrupt','hrtimer','smp_call'))):
            return 'kernel: interrupts / timers / IPIs'
        if anyk(fr, lambda s: s in ('do_syscall_64','entry_SYSCALL_64_after_hwframe','syscall_exit_to_user_mode','entry_SYSCALL_64')):
            return 'kernel: syscall entry/exit, other syscalls'
        return 'kernel: other'
    if ALLOC.match(leaf) or leaf.startswith(('mi_','_mi_')):
        return 'malloc/free (mimalloc)'
    if leaf.startswith('httparse::') or leaf.startswith('<httparse::'):
        return 'httparse'
    if 'portcullis::' in leaf:
        return "portcullis's own code (self time in portcullis:: frames)"
    if re.match(r'^<?(pingora_core::protocols::http|pingora_http::|http::|<http::)', leaf) or leaf.startswith(('pingora_http','<pingora_http')) or 'HeaderMap' in leaf or 'CaseHeaderName' in leaf:
        return 'pingora HTTP parsing/serialization (pingora_core::protocols::http, pingora_http, http crate)'
    if re.match(r'^<?(tokio::|mio::|<tokio|<mio)', leaf) or leaf.startswith('tokio') :
        return 'tokio runtime (scheduler, I/O driver, timers, sync)'
    if leaf.startswith('__mem') or leaf.startswith('__memset') or leaf.startswith('__memmove'):
        return 'other: memcpy/memset (libc)'
    if 'clock_gettime' in leaf or 'Timespec' in leaf:
        return 'other: clock_gettime (vDSO)'
    if re.match(r'^<?(pingora_proxy|pingora_core|pingora_pool|pingora_timeout|pingora_load_balancing|pingora_error)', leaf) or leaf.startswith(('<pingora','pingora')):
        return 'other: pingora proxy state machine, pool, timeouts, connectors'
    if re.match(r'^<?(bytes::)', leaf):
        return 'other: bytes (Bytes clone/drop)'
    if leaf.startswith(('__libc_recv','__send','__GI___getpeername','__libc_write','__GI___libc_write','syscall','__libc')) :
        return 'other: libc syscall wrappers'
    return 'other: rest (core/alloc/std Rust, futures glue)'

b = collections.Counter(); ex = collections.defaultdict(collections.Counter)
for fr, k in stacks:
    x = bucket(fr); b[x] += k; ex[x][fr[-1]] += k
print(f'# {fn}: {tot} samples')
groups = collections.Counter()
for name, k in b.items():
    g = name.split(':')[0] if name.startswith(('kernel','other')) else name
    groups[g] += k
for g, k in groups.most_common():
    print(f'{100*k/tot:6.2f}%  {g.upper() if g in ("kernel","other") else g}')
    for name, kk in b.most_common():
        gg = name.split(':')[0] if name.startswith(('kernel','other')) else name
        if gg != g: continue
        if name != g: print(f'   {100*kk/tot:6.2f}%  {name}')
        top = ', '.join(f'{s[:70]} {100*v/tot:.1f}' for s, v in ex[name].most_common(3))
        print(f'            top leaves: {top}')
