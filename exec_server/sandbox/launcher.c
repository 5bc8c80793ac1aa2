/*
 * exec-sandbox-launcher: apply a sandbox policy to itself, then execve() the command.
 *
 * The server starts this program on CPython's vfork path (no preexec_fn), with the
 * command's cwd and final environment already set, so the pid the server sees is the
 * pid of the command: this program only restricts itself and execs.
 *
 * Usage (the Python side builds the arguments; see exec_server/sandbox/_plan.py):
 *
 *   exec-sandbox-launcher --abi N --mode readOnly|workspaceWrite [--rw PATH]...
 *                         --net 0|1 [--netns-fd FD] [--uid N --gid N] [--log-new-exec]
 *                         [--check] -- argv...
 *   exec-sandbox-launcher --source-id
 *   exec-sandbox-launcher --hold-netns
 *
 *   --abi N         Landlock ABI the plan was made for: every right of that ABI is
 *                   handled, and a kernel that offers less is a setup failure.
 *   --mode          readOnly: read/execute everywhere, write only to a few devices.
 *                   workspaceWrite: plus full rights beneath each --rw PATH.
 *   --net 0         empty network namespace + seccomp socket filter + Landlock TCP rules.
 *   --netns-fd FD   (root) join this empty network namespace instead of creating one:
 *                   setns is ~10x cheaper than creating and later destroying a netns.
 *   --hold-netns    (root) create an empty network namespace, print "ready", and keep it
 *                   alive until stdin closes: the server opens /proc/PID/ns/net meanwhile.
 *   --uid/--gid     (only when started as root) the unprivileged identity to drop to.
 *   --log-new-exec  LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON: audit denials after execve.
 *   --check         apply everything, print "ok" and exit 0 instead of exec (self-test).
 *
 * Order, and why:
 *   1. no_new_privs      required for unprivileged seccomp/Landlock; stops setuid gains.
 *      terminal          give up a controlling terminal inherited from the server.
 *   2. namespaces        unshare needs CAP_SYS_ADMIN (root) or a user namespace, and a
 *                        non-root caller must write /proc/self/uid_map before Landlock
 *                        forbids writing /proc.
 *   3. Landlock          opens the rule paths while still privileged (root can open any).
 *   4. seccomp           only filters socket families; nothing below creates sockets.
 *   5. identity          bounding set and securebits need CAP_SETPCAP, setgroups/setres*id
 *                        need CAP_SETGID/CAP_SETUID: so they go last, then every
 *                        capability set is cleared and the drop is verified.
 *   6. execvp            PATH lookup from the (final) environment.
 *
 * Exit codes: 125 = the sandbox could not be applied (nothing was executed);
 *             127 = the command could not be executed (message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef LAUNCHER_SOURCE_ID
#define LAUNCHER_SOURCE_ID "unknown"
#endif

#define EXIT_SETUP_FAILED 125
#define EXIT_EXEC_FAILED 127
#define PROG "exec-sandbox-launcher"

/* Landlock uapi as of Linux 6.15 (ABI 7). Defined here because the build machine's
 * <linux/landlock.h> may predate it; the values are fixed kernel ABI. */
struct ll_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net; /* ABI 4 */
    uint64_t scoped;             /* ABI 6 */
};
struct ll_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

#define LL_CREATE_RULESET_VERSION (1U << 0)
#define LL_RULE_PATH_BENEATH 1
#define LL_RESTRICT_SELF_LOG_NEW_EXEC_ON (1U << 1) /* ABI 7 */

#define LL_FS_EXECUTE (1ULL << 0)
#define LL_FS_WRITE_FILE (1ULL << 1)
#define LL_FS_READ_FILE (1ULL << 2)
#define LL_FS_READ_DIR (1ULL << 3)
#define LL_FS_REMOVE_DIR (1ULL << 4)
#define LL_FS_REMOVE_FILE (1ULL << 5)
#define LL_FS_MAKE_CHAR (1ULL << 6)
#define LL_FS_MAKE_DIR (1ULL << 7)
#define LL_FS_MAKE_REG (1ULL << 8)
#define LL_FS_MAKE_SOCK (1ULL << 9)
#define LL_FS_MAKE_FIFO (1ULL << 10)
#define LL_FS_MAKE_BLOCK (1ULL << 11)
#define LL_FS_MAKE_SYM (1ULL << 12)
#define LL_FS_REFER (1ULL << 13)    /* ABI 2 */
#define LL_FS_TRUNCATE (1ULL << 14) /* ABI 3 */
#define LL_FS_IOCTL_DEV (1ULL << 15) /* ABI 5 */

#define LL_NET_BIND_TCP (1ULL << 0)    /* ABI 4 */
#define LL_NET_CONNECT_TCP (1ULL << 1) /* ABI 4 */

#define LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0) /* ABI 6 */
#define LL_SCOPE_SIGNAL (1ULL << 1)               /* ABI 6 */

/* Rights that apply to a non-directory; a rule on a file may only allow these. */
#define LL_FS_FILE_RIGHTS \
    (LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_READ_FILE | LL_FS_TRUNCATE | LL_FS_IOCTL_DEV)
#define LL_FS_READ_RIGHTS (LL_FS_EXECUTE | LL_FS_READ_FILE | LL_FS_READ_DIR)

#define MAX_RW_PATHS 64

/* Devices every process may write (and read) even in readOnly mode. */
static const char *const writable_devices[] = {
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", NULL,
};

struct options {
    int abi;
    int read_only;
    const char *rw_paths[MAX_RW_PATHS];
    int rw_count;
    int network;
    int netns_fd; /* -1: create a new network namespace */
    long uid, gid; /* -1: no identity change */
    int log_new_exec;
    int check;
    char **command;
};

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
    int saved = errno;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (saved)
        fprintf(stderr, PROG ": sandbox setup failed: %s: %s\n", buf, strerror(saved));
    else
        fprintf(stderr, PROG ": sandbox setup failed: %s\n", buf);
    _exit(EXIT_SETUP_FAILED);
}

/* A setup failure that is not a failed system call (no strerror in the message). */
#define FAIL(...)             \
    do {                      \
        errno = 0;            \
        die(__VA_ARGS__);     \
    } while (0)

static long parse_number(const char *flag, const char *text, long min, long max) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *text == '\0' || *end != '\0' || value < min || value > max) {
        FAIL("bad value for %s: '%s'", flag, text);
    }
    return value;
}

static void parse_args(int argc, char **argv, struct options *opt) {
    memset(opt, 0, sizeof *opt);
    opt->abi = -1;
    opt->read_only = -1;
    opt->network = -1;
    opt->netns_fd = -1;
    opt->uid = opt->gid = -1;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (strcmp(a, "--log-new-exec") == 0) {
            opt->log_new_exec = 1;
            continue;
        } else if (strcmp(a, "--check") == 0) {
            opt->check = 1;
            continue;
        }
        if (value == NULL)
            FAIL("missing value for '%s'", a);
        i++;
        if (strcmp(a, "--abi") == 0) {
            opt->abi = (int)parse_number(a, value, 1, 1000);
        } else if (strcmp(a, "--mode") == 0) {
            if (strcmp(value, "readOnly") == 0)
                opt->read_only = 1;
            else if (strcmp(value, "workspaceWrite") == 0)
                opt->read_only = 0;
            else
                FAIL("unknown mode '%s'", value);
        } else if (strcmp(a, "--rw") == 0) {
            if (opt->rw_count == MAX_RW_PATHS)
                FAIL("more than %d writable paths", MAX_RW_PATHS);
            if (value[0] != '/')
                FAIL("writable path is not absolute: '%s'", value);
            opt->rw_paths[opt->rw_count++] = value;
        } else if (strcmp(a, "--net") == 0) {
            opt->network = (int)parse_number(a, value, 0, 1);
        } else if (strcmp(a, "--netns-fd") == 0) {
            opt->netns_fd = (int)parse_number(a, value, 3, 1 << 20);
        } else if (strcmp(a, "--uid") == 0) {
            opt->uid = parse_number(a, value, 0, 0xfffffffeL);
        } else if (strcmp(a, "--gid") == 0) {
            opt->gid = parse_number(a, value, 0, 0xfffffffeL);
        } else {
            FAIL("unknown option '%s'", a);
        }
    }
    if (opt->abi < 0 || opt->read_only < 0 || opt->network < 0)
        FAIL("--abi, --mode and --net are required");
    if (opt->netns_fd >= 0 && opt->network)
        FAIL("--netns-fd given with --net 1");
    if (opt->read_only && opt->rw_count)
        FAIL("--rw given with --mode readOnly");
    if ((opt->uid < 0) != (opt->gid < 0))
        FAIL("--uid and --gid go together");
    if (opt->uid == 0 || opt->gid == 0)
        FAIL("refusing to 'drop' to uid/gid 0");
    if (!opt->check && i >= argc)
        FAIL("no command after '--'");
    opt->command = argv + i;
}

/* ---- terminal ------------------------------------------------------------------ */

/* The server starts commands in their own process group but not their own session, so a
 * server started from a terminal would share it: give it up, so the command can neither
 * read nor type into it. (setsid() would fail: we already lead a process group.) */
static void detach_terminal(void) {
    int fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return; /* ENXIO: no controlling terminal, the usual case for a server */
    if (ioctl(fd, TIOCNOTTY) != 0)
        die("ioctl(TIOCNOTTY)");
    close(fd);
}

/* ---- namespaces ---------------------------------------------------------------- */

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        die("open %s", path);
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len)
        die("write %s", path);
    close(fd);
}

/* An empty network namespace: only a loopback device, and it is down. */
static void isolate_network(const struct options *opt) {
    if (opt->netns_fd >= 0) {
        /* setns checks that the fd is a network namespace; the server made it empty. */
        if (setns(opt->netns_fd, CLONE_NEWNET) != 0)
            die("setns(--netns-fd %d)", opt->netns_fd);
        close(opt->netns_fd);
        return;
    }
    if (geteuid() == 0) {
        if (unshare(CLONE_NEWNET) != 0)
            die("unshare(CLONE_NEWNET)");
        return;
    }
    /* Without CAP_SYS_ADMIN a network namespace needs a user namespace that owns it;
     * map only ourselves so file ownership keeps its meaning. */
    uid_t uid = geteuid();
    gid_t gid = getegid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0)
        die("unshare(CLONE_NEWUSER|CLONE_NEWNET)");
    char map[64];
    write_file("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "%u %u 1\n", (unsigned)uid, (unsigned)uid);
    write_file("/proc/self/uid_map", map);
    snprintf(map, sizeof map, "%u %u 1\n", (unsigned)gid, (unsigned)gid);
    write_file("/proc/self/gid_map", map);
}

/* --- limits (begin) --- */
/* Resource limits (exec_server/sandbox/_limits.py builds these flags; they come first, before
 * every policy flag):
 *
 *   [--cgroup DIR]... [--rlimit cpu|fsize|nofile=SOFT:HARD]... [--limits-only]
 *
 *   --cgroup DIR    join this cgroup (write our pid to DIR/cgroup.procs): one per hierarchy
 *                   (cgroup v2, or the v1 memory and pids hierarchies). The server created
 *                   DIR and wrote its limits.
 *   --rlimit        setrlimit(RLIMIT_CPU/RLIMIT_FSIZE/RLIMIT_NOFILE, SOFT, HARD).
 *   --limits-only   apply the limits and exec what follows "--" (an unsandboxed command).
 *
 * apply_limits() runs first in main(): before any namespace is created and before any fork,
 * so the command and everything it starts are inside the cgroups and inherit the rlimits.
 * Joining a cgroup needs write access to cgroup.procs of the common ancestor, which the
 * server has and a sandboxed process may no longer have after the identity drop. */
#include <sys/resource.h>

#define MAX_LIMIT_CGROUPS 4
#define MAX_LIMIT_RLIMITS 3

struct limit_rlimit {
    int resource;
    rlim_t soft, hard;
};

struct limits {
    const char *cgroups[MAX_LIMIT_CGROUPS];
    int cgroup_count;
    struct limit_rlimit rlimits[MAX_LIMIT_RLIMITS];
    int rlimit_count;
    int only;
};

static rlim_t parse_rlim(const char *flag, const char *text, const char **end) {
    char *stop;
    errno = 0;
    unsigned long long value = strtoull(text, &stop, 10);
    if (errno || stop == text || text[0] == '-' || value == 0 || value >= (unsigned long long)RLIM_INFINITY)
        FAIL("bad value for %s: '%s'", flag, text);
    *end = stop;
    return (rlim_t)value;
}

static void parse_rlimit(const char *value, struct limits *lim) {
    static const struct {
        const char *name;
        int resource;
    } names[] = {{"cpu", RLIMIT_CPU}, {"fsize", RLIMIT_FSIZE}, {"nofile", RLIMIT_NOFILE}};
    if (lim->rlimit_count == MAX_LIMIT_RLIMITS)
        FAIL("more than %d --rlimit options", MAX_LIMIT_RLIMITS);
    const char *eq = strchr(value, '=');
    if (eq == NULL)
        FAIL("--rlimit wants NAME=SOFT:HARD, not '%s'", value);
    struct limit_rlimit *rl = &lim->rlimits[lim->rlimit_count];
    rl->resource = -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strlen(names[i].name) == (size_t)(eq - value) && strncmp(value, names[i].name, (size_t)(eq - value)) == 0)
            rl->resource = names[i].resource;
    }
    if (rl->resource < 0)
        FAIL("unknown --rlimit '%s'", value);
    const char *end;
    rl->soft = parse_rlim("--rlimit", eq + 1, &end);
    if (*end != ':')
        FAIL("--rlimit wants NAME=SOFT:HARD, not '%s'", value);
    rl->hard = parse_rlim("--rlimit", end + 1, &end);
    if (*end != '\0' || rl->soft > rl->hard)
        FAIL("bad value for --rlimit: '%s'", value);
    lim->rlimit_count++;
}

/* Take the leading limit flags out of argv (so parse_args sees only the policy); returns
 * the new argc. */
static int take_limit_args(int argc, char **argv, struct limits *lim) {
    memset(lim, 0, sizeof *lim);
    int i = 1;
    while (i < argc) {
        const char *a = argv[i];
        if (strcmp(a, "--limits-only") == 0) {
            lim->only = 1;
            i++;
            continue;
        }
        if (strcmp(a, "--cgroup") != 0 && strcmp(a, "--rlimit") != 0)
            break;
        if (i + 1 >= argc)
            FAIL("missing value for '%s'", a);
        const char *value = argv[i + 1];
        if (strcmp(a, "--cgroup") == 0) {
            if (lim->cgroup_count == MAX_LIMIT_CGROUPS)
                FAIL("more than %d --cgroup options", MAX_LIMIT_CGROUPS);
            if (value[0] != '/')
                FAIL("cgroup path is not absolute: '%s'", value);
            lim->cgroups[lim->cgroup_count++] = value;
        } else {
            parse_rlimit(value, lim);
        }
        i += 2;
    }
    int taken = i - 1;
    for (int j = i; j <= argc; j++) /* argv[argc] is NULL and moves too */
        argv[j - taken] = argv[j];
    return argc - taken;
}

static void apply_limits(const struct limits *lim) {
    for (int i = 0; i < lim->cgroup_count; i++) {
        char path[4096];
        if (snprintf(path, sizeof path, "%s/cgroup.procs", lim->cgroups[i]) >= (int)sizeof path)
            FAIL("cgroup path too long");
        char pid[32];
        snprintf(pid, sizeof pid, "%d\n", (int)getpid());
        write_file(path, pid);
    }
    for (int i = 0; i < lim->rlimit_count; i++) {
        struct rlimit value = {.rlim_cur = lim->rlimits[i].soft, .rlim_max = lim->rlimits[i].hard};
        if (setrlimit(lim->rlimits[i].resource, &value) != 0)
            die("setrlimit(%d)", lim->rlimits[i].resource);
    }
}

/* --limits-only: what follows "--" runs with the limits and nothing else. */
static int exec_limited(int argc, char **argv) {
    if (argc < 3 || strcmp(argv[1], "--") != 0)
        FAIL("--limits-only wants '-- argv...' and no policy options");
    execvp(argv[2], argv + 2);
    int saved = errno;
    fprintf(stderr, PROG ": cannot execute '%s': %s\n", argv[2], strerror(saved));
    return EXIT_EXEC_FAILED;
}
/* --- limits (end) --- */

/* ---- Landlock ------------------------------------------------------------------ */

static uint64_t fs_rights_for_abi(int abi) {
    uint64_t rights = (LL_FS_MAKE_SYM << 1) - 1; /* ABI 1: bits 0..12 */
    if (abi >= 2)
        rights |= LL_FS_REFER;
    if (abi >= 3)
        rights |= LL_FS_TRUNCATE;
    if (abi >= 5)
        rights |= LL_FS_IOCTL_DEV;
    return rights;
}

static void add_path_rule(int ruleset, const char *path, uint64_t allowed, int must_exist) {
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) {
        if (!must_exist && (errno == ENOENT || errno == ENXIO))
            return;
        die("open %s", path);
    }
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("stat %s", path);
    if (!S_ISDIR(st.st_mode))
        allowed &= LL_FS_FILE_RIGHTS;
    struct ll_path_beneath_attr rule = {.allowed_access = allowed, .parent_fd = fd};
    if (syscall(__NR_landlock_add_rule, ruleset, LL_RULE_PATH_BENEATH, &rule, 0) != 0)
        die("landlock_add_rule %s", path);
    close(fd);
}

static void apply_landlock(const struct options *opt) {
    long kernel_abi = syscall(__NR_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    if (kernel_abi < 0)
        die("Landlock is not available");
    if (kernel_abi < opt->abi) {
        FAIL("kernel Landlock ABI %ld is older than the planned ABI %d", kernel_abi, opt->abi);
    }
    const uint64_t handled_fs = fs_rights_for_abi(opt->abi);
    struct ll_ruleset_attr attr = {.handled_access_fs = handled_fs};
    size_t attr_size = offsetof(struct ll_ruleset_attr, handled_access_net);
    if (opt->abi >= 4) {
        attr_size = offsetof(struct ll_ruleset_attr, scoped);
        /* Network off: handle TCP bind/connect and allow no port, so a connect is
         * refused by Landlock and audited with its destination. Network on: leave
         * TCP unhandled (allowed). */
        if (!opt->network)
            attr.handled_access_net = LL_NET_BIND_TCP | LL_NET_CONNECT_TCP;
    }
    if (opt->abi >= 6) {
        attr_size = sizeof attr;
        attr.scoped = LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL;
    }
    int ruleset = (int)syscall(__NR_landlock_create_ruleset, &attr, attr_size, 0);
    if (ruleset < 0)
        die("landlock_create_ruleset");

    add_path_rule(ruleset, "/", LL_FS_READ_RIGHTS & handled_fs, 1);
    const uint64_t device_rights = (LL_FS_READ_FILE | LL_FS_WRITE_FILE | LL_FS_TRUNCATE) & handled_fs;
    for (const char *const *dev = writable_devices; *dev; dev++) {
        /* Memory devices take ioctls too: `ls > /dev/null` asks isatty(), and refusing it
         * would read as a sandbox denial. Not /dev/tty: a terminal's ioctls (TIOCSTI) could
         * type into the operator's shell. */
        uint64_t rights = device_rights;
        if (strcmp(*dev, "/dev/tty") != 0)
            rights |= LL_FS_IOCTL_DEV & handled_fs;
        add_path_rule(ruleset, *dev, rights, 0);
    }
    /* `echo x > /dev/stderr` opens /proc/self/fd/2 with O_CREAT, and the kernel asks the
     * create hook about a /proc/PID/fd entry that is not yet cached before it finds the
     * entry exists: Landlock would log a denial for an open that then succeeds. procfs
     * cannot create files at all, so allowing the attempt changes nothing but the log. */
    add_path_rule(ruleset, "/proc", LL_FS_MAKE_REG, 0);
    for (int i = 0; i < opt->rw_count; i++)
        add_path_rule(ruleset, opt->rw_paths[i], handled_fs, 1);

    unsigned flags = 0;
    if (opt->log_new_exec && opt->abi >= 7)
        flags |= LL_RESTRICT_SELF_LOG_NEW_EXEC_ON;
    if (syscall(__NR_landlock_restrict_self, ruleset, flags) != 0)
        die("landlock_restrict_self");
    close(ruleset);
}

/* ---- seccomp ------------------------------------------------------------------- */

#define X32_SYSCALL_BIT 0x40000000U
#define ARG_LOW(n) (offsetof(struct seccomp_data, args) + (n) * sizeof(uint64_t)) /* little-endian */

/* Instruction indices, so that jump offsets are computed, not counted by hand. */
enum {
    I_LD_ARCH,
    I_ARCH,
    I_LD_NR,
    I_X32,
    I_SOCKET,
    I_SOCKETPAIR,
    I_IO_URING,
    I_ALLOW_OTHER,
    I_LD_FAMILY,
    I_UNIX,
    I_INET,
    I_INET6,
    I_LD_TYPE,
    I_TYPE_MASK,
    I_STREAM,
    I_LD_PROTO,
    I_PROTO_DEFAULT,
    I_PROTO_TCP,
    I_DENY,
    I_ALLOW,
    I_EPERM,
    I_KILL,
    I_COUNT
};
#define TO(from, to) ((unsigned char)((to) - (from) - 1))

/* socket()/socketpair() fail with EACCES for every family except AF_UNIX, and except
 * TCP over AF_INET/AF_INET6 when Landlock refuses every TCP bind/connect (tcp_to_landlock):
 * then the refusal, and its audit record naming the destination, come from Landlock.
 * io_uring can create sockets without the socket() syscall, so it is refused too.
 * Any other architecture or the x32 ABI is killed: the numbers above would not apply. */
static void apply_seccomp(int tcp_to_landlock) {
    const unsigned char inet_target = tcp_to_landlock ? I_LD_TYPE : I_DENY;
    struct sock_filter code[I_COUNT] = {
        [I_LD_ARCH] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        [I_ARCH] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, TO(I_ARCH, I_KILL)),
        [I_LD_NR] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        [I_X32] = BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, TO(I_X32, I_KILL), 0),
        [I_SOCKET] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, TO(I_SOCKET, I_LD_FAMILY), 0),
        [I_SOCKETPAIR] =
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socketpair, TO(I_SOCKETPAIR, I_LD_FAMILY), 0),
        [I_IO_URING] =
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, TO(I_IO_URING, I_EPERM), 0),
        [I_ALLOW_OTHER] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        [I_LD_FAMILY] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(0)),
        [I_UNIX] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, TO(I_UNIX, I_ALLOW), 0),
        [I_INET] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET, TO(I_INET, inet_target), 0),
        [I_INET6] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET6, TO(I_INET6, inet_target),
                             TO(I_INET6, I_DENY)),
        [I_LD_TYPE] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(1)),
        /* strip SOCK_NONBLOCK / SOCK_CLOEXEC */
        [I_TYPE_MASK] = BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xf),
        [I_STREAM] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SOCK_STREAM, 0, TO(I_STREAM, I_DENY)),
        [I_LD_PROTO] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(2)),
        [I_PROTO_DEFAULT] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, TO(I_PROTO_DEFAULT, I_ALLOW), 0),
        [I_PROTO_TCP] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, TO(I_PROTO_TCP, I_ALLOW),
                                 TO(I_PROTO_TCP, I_DENY)),
        [I_DENY] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EACCES & SECCOMP_RET_DATA)),
        [I_ALLOW] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        [I_EPERM] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        [I_KILL] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    };
    struct sock_fprog prog = {.len = I_COUNT, .filter = code};
    /* FLAG_LOG: errno actions are audited (kernel.seccomp.actions_logged). Logging is
     * for diagnosis, not enforcement, so a kernel without the flag still gets the filter. */
    if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_LOG, &prog) == 0)
        return;
    if (errno != EINVAL || syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
        die("seccomp(SECCOMP_SET_MODE_FILTER)");
}

/* ---- identity and capabilities -------------------------------------------------- */

static int has_effective_cap(int cap) {
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    if (syscall(__NR_capget, &header, data) != 0)
        return 0;
    return (data[cap / 32].effective >> (cap % 32)) & 1;
}

static void clear_bounding_set(void) {
    for (int cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno == EINVAL) /* past CAP_LAST_CAP */
                return;
            die("PR_CAPBSET_DROP %d", cap);
        }
    }
}

static void clear_capability_sets(void) {
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(__NR_capset, &header, data) != 0)
        die("capset(0)");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        die("PR_CAP_AMBIENT_CLEAR_ALL");
}

#define PIPEFS_MAGIC 0x50495045

/* The server's pipes for stdin/stdout/stderr are owned by root with mode 0600: after the
 * drop, `echo x > /dev/stdout` (a reopen through /proc/self/fd/1) would be refused. Give
 * the command the anonymous pipes that are its own; never touch a named FIFO or file. */
static void hand_over_std_pipes(const struct options *opt) {
    for (int fd = 0; fd <= 2; fd++) {
        struct stat st;
        struct statfs sfs;
        if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_uid != geteuid())
            continue;
        if (fstatfs(fd, &sfs) != 0 || sfs.f_type != PIPEFS_MAGIC)
            continue;
        if (fchown(fd, (uid_t)opt->uid, (gid_t)opt->gid) != 0)
            die("fchown(fd %d)", fd);
    }
}

static void drop_identity(const struct options *opt) {
    const int privileged = has_effective_cap(CAP_SETPCAP);
    if (opt->uid >= 0) {
        if (!privileged) {
            FAIL("--uid given but the launcher lacks CAP_SETPCAP/CAP_SETUID");
        }
        hand_over_std_pipes(opt);
        clear_bounding_set();
        /* Lock "uid 0 means nothing": no caps from root on exec, no keeping caps across
         * setuid, no ambient raise -- for this process and everything it starts. */
        if (prctl(PR_SET_SECUREBITS,
                  SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED |
                      SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE |
                      SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
                  0, 0, 0) != 0)
            die("PR_SET_SECUREBITS");
        if (setgroups(0, NULL) != 0)
            die("setgroups(0)");
        if (setresgid((gid_t)opt->gid, (gid_t)opt->gid, (gid_t)opt->gid) != 0)
            die("setresgid(%ld)", opt->gid);
        if (setresuid((uid_t)opt->uid, (uid_t)opt->uid, (uid_t)opt->uid) != 0)
            die("setresuid(%ld)", opt->uid);
    } else if (privileged) {
        /* Non-root caller inside its own user namespace: no uid change, but the
         * namespace's full capability set must not reach the command either. */
        clear_bounding_set();
    }
    clear_capability_sets();

    if (opt->uid >= 0) {
        uid_t r, e, s;
        gid_t rg, eg, sg;
        if (getresuid(&r, &e, &s) != 0 || getresgid(&rg, &eg, &sg) != 0)
            die("getresuid");
        if (r != (uid_t)opt->uid || e != r || s != r || rg != (gid_t)opt->gid || eg != rg || sg != rg ||
            getgroups(0, NULL) != 0) {
            FAIL("identity did not change as requested");
        }
        if (setuid(0) == 0) {
            FAIL("uid 0 is still reachable after the drop");
        }
    }
}

/* Keep an empty network namespace alive while the server opens /proc/PID/ns/net. */
static int hold_netns(void) {
    if (unshare(CLONE_NEWNET) != 0)
        die("unshare(CLONE_NEWNET)");
    if (puts("ready") == EOF || fflush(stdout) != 0)
        die("write ready");
    char byte;
    while (read(STDIN_FILENO, &byte, 1) > 0) {
    }
    return 0;
}

/* ---- main ---------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--source-id") == 0) {
        puts(LAUNCHER_SOURCE_ID);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--hold-netns") == 0)
        return hold_netns();
    /* --- limits (begin) --- */
    struct limits lim;
    argc = take_limit_args(argc, argv, &lim);
    apply_limits(&lim);
    if (lim.only)
        return exec_limited(argc, argv);
    /* --- limits (end) --- */
    struct options opt;
    parse_args(argc, argv, &opt);
    if (opt.uid >= 0 && geteuid() != 0) {
        FAIL("--uid is only meaningful when started as root");
    }

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        die("PR_SET_NO_NEW_PRIVS");
    detach_terminal();
    if (!opt.network)
        isolate_network(&opt);
    apply_landlock(&opt);
    if (!opt.network)
        apply_seccomp(opt.abi >= 4);
    drop_identity(&opt);

    if (opt.check) {
        printf("ok %s\n", LAUNCHER_SOURCE_ID);
        return 0;
    }
    execvp(opt.command[0], opt.command);
    int saved = errno;
    fprintf(stderr, PROG ": cannot execute '%s': %s\n", opt.command[0], strerror(saved));
    return EXIT_EXEC_FAILED;
}
