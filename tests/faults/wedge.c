/*
 * wedge: an LD_PRELOAD library that makes nng_close never return, as it
 * does when libnng's reaper is wedged (libnng 1.5.2 after a pipe closed in
 * its own callback), for the test that dopad stops within its bound
 * whatever nng does.
 *
 *   DOPA_WEDGE_FILE  while a file exists at this path, every nng_close
 *                    called blocks for good; otherwise calls pass through
 */
#define _GNU_SOURCE 1
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <nng/nng.h>

int nng_close(nng_socket s)
{
    static int (*real_close)(nng_socket);
    const char *file = getenv("DOPA_WEDGE_FILE");
    if (file != NULL && access(file, F_OK) == 0)
        for (;;)
            pause();
    if (real_close == NULL)
        *(void **)&real_close = dlsym(RTLD_NEXT, "nng_close");
    return real_close != NULL ? real_close(s) : NNG_ENOTSUP;
}
