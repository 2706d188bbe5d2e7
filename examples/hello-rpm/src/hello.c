/* hello: the example program, linked against libhello.so.1 from the second subpackage. */
#include <stdio.h>
#include <stdlib.h>
#include "hello.h"

int main(int argc, char **argv)
{
    const char *who = argc > 1 ? argv[1] : getenv("HELLO_NAME");
    hello_greet(who && *who ? who : "world");
    return 0;
}
