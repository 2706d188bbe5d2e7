/* dlcall: the dynamically linked program of the device and host-library tests.
 *
 *   dlcall SONAME SYMBOL   dlopen SONAME as the loader finds it, call SYMBOL, a
 *                          `const char *(void)`, and print what it returns
 *                          (exit 3 when the library or the symbol is not found)
 */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fputs("usage: dlcall SONAME SYMBOL\n", stderr);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        printf("dlopen: %s\n", dlerror());
        return 3;
    }
    const char *(*f)(void) = (const char *(*)(void))dlsym(lib, argv[2]);
    if (!f) {
        printf("dlsym: %s\n", dlerror());
        return 3;
    }
    printf("%s\n", f());
    return 0;
}
