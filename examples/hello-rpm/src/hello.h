#ifndef HELLO_H
#define HELLO_H
const char *hello_version(void);
void hello_greet(const char *who);
#endif
