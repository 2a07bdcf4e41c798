/* LD_PRELOAD shim: TCP_NODELAY on every accepted socket.
 *
 * Used for the emulator only (bench/harness.py builds it with cc into the run's temp dir).
 * `tollgate emulate` serves with axum::serve, which leaves Nagle's algorithm on; a
 * stream's small SSE writes on a keep-alive connection then wait for the peer's delayed
 * ACK (~40 ms per stall), so the upstream itself, not the gateway in front of it, would
 * set every streaming figure. Real vendors' front ends send with TCP_NODELAY. The shim
 * makes the emulator behave like them; the gateways are measured as they are built.
 * `bench/run --emulator-nagle` runs without it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void nodelay(int fd)
{
    if (fd >= 0) {
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
}

int accept4(int s, struct sockaddr *addr, socklen_t *len, int flags)
{
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real)
        real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int fd = real(s, addr, len, flags);
    nodelay(fd);
    return fd;
}

int accept(int s, struct sockaddr *addr, socklen_t *len)
{
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real)
        real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    int fd = real(s, addr, len);
    nodelay(fd);
    return fd;
}
