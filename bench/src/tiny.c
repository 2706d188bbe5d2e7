/* An 8 KB entrypoint with no libc: `_exit(0)` as its only instruction sequence. The
 * start-up row runs it next to the static `true` to split a bundle's start-up into the
 * container set-up (this program) and the first read of a 760 KB program (the difference).
 * Built with `gcc -nostdlib -static -Os`. */
void _start(void) { __asm__ volatile("mov $60, %eax\n\txor %edi, %edi\n\tsyscall"); }
