/* Run a command under the seccomp filter systemd 252 installs for
 * MemoryDenyWriteExecute=yes (src/shared/seccomp-util.c,
 * seccomp_memory_deny_write_execute): EPERM for mmap asking PROT_WRITE and
 * PROT_EXEC together, for mprotect/pkey_mprotect asking PROT_EXEC at all, and
 * for shmat with SHM_EXEC. x86-64 only; the test skips elsewhere. */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Low 32 bits of the third argument (little-endian). */
#define ARG2 (offsetof(struct seccomp_data, args) + 2 * sizeof(__u64))
#define LD(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))
#define AND(k) BPF_STMT(BPF_ALU | BPF_AND | BPF_K, (k))
#define JEQ(k, jt, jf) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (k), (jt), (jf))
#define RET(k) BPF_STMT(BPF_RET | BPF_K, (k))

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s COMMAND [ARG...]\n", argv[0]);
        return 2;
    }
    struct sock_filter filter[] = {
        /* 0 */ LD(offsetof(struct seccomp_data, arch)),
        /* 1 */ JEQ(AUDIT_ARCH_X86_64, 1, 0),
        /* 2 */ RET(SECCOMP_RET_ALLOW),
        /* 3 */ LD(offsetof(struct seccomp_data, nr)),
        /* 4 */ JEQ(__NR_mmap, 4, 0),           /* -> 9 */
        /* 5 */ JEQ(__NR_mprotect, 6, 0),       /* -> 12 */
        /* 6 */ JEQ(__NR_pkey_mprotect, 5, 0),  /* -> 12 */
        /* 7 */ JEQ(__NR_shmat, 7, 0),          /* -> 15 */
        /* 8 */ RET(SECCOMP_RET_ALLOW),
        /* 9 */ LD(ARG2),
        /* 10 */ AND(PROT_WRITE | PROT_EXEC),
        /* 11 */ JEQ(PROT_WRITE | PROT_EXEC, 6, 7),  /* -> 18 : 19 */
        /* 12 */ LD(ARG2),
        /* 13 */ AND(PROT_EXEC),
        /* 14 */ JEQ(PROT_EXEC, 3, 4),               /* -> 18 : 19 */
        /* 15 */ LD(ARG2),
        /* 16 */ AND(SHM_EXEC),
        /* 17 */ JEQ(SHM_EXEC, 0, 1),                /* -> 18 : 19 */
        /* 18 */ RET(SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        /* 19 */ RET(SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {
        .len = (unsigned short)(sizeof(filter) / sizeof(filter[0])),
        .filter = filter,
    };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("PR_SET_NO_NEW_PRIVS");
        return 125;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("PR_SET_SECCOMP");
        return 125;
    }
    execvp(argv[1], argv + 1);
    perror("execvp");
    return 127;
}
