/* libhello: the example's own shared library, shipped in the hello-rpm-libs package. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "hello.h"

const char *hello_version(void) { return "1.0"; }

void hello_greet(const char *who)
{
    /* sqrt comes from libm (computed at run time, so the library really needs it): the
       bundle must carry the build host's libm as well as its own libhello. */
    double letters = (double)strlen(who);
    printf("Hello, %s, from libhello %s (the square root of your name's length is %.3f)\n",
           who, hello_version(), sqrt(letters));
}
