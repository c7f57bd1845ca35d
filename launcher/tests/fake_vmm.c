/* A tellus-vmm that misbehaves, for launcher/tests/builtin_run.rs. It says
 * "ready" on the control socket like the real one, then, by the variant it
 * was compiled with:
 *   -DGARBAGE   reports a host reset nobody asked for, then waits forever;
 *   -DDEAF      ignores every control byte (and the end of the stream).
 * The launcher must stop it either way. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int ctl = -1;
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--control-fd") == 0)
            ctl = atoi(argv[i + 1]);
    if (ctl < 3)
        return 2;
    if (write(ctl, "ready\n", 6) != 6)
        return 3;
#ifdef GARBAGE
    if (write(ctl, "reset host-reset\n", 17) != 17)
        return 4;
#endif
    for (;;) {
        char b;
        if (read(ctl, &b, 1) <= 0)
            pause();
    }
}
