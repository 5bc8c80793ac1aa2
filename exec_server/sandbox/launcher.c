/*
 * exec-sandbox-launcher: start a command in its own namespaces, as the init of its own PID
 * namespace, under the sandbox policy given on the command line.
 *
 * The server starts this program on CPython's vfork path (no preexec_fn) with an environment
 * of its own (nothing of the command's reaches the dynamic loader or this program: see
 * --env-fd). The pid the server sees is this process's; its exit status is the command's.
 *
 * Usage (the Python side builds the arguments; see exec_server/sandbox/_plan.py):
 *
 *   exec-sandbox-launcher [--pty-fd FD --pty-size ROWS:COLS] [limit flags]
 *                         --mode none|readOnly|workspaceWrite [--abi N] [--net 0|1]
 *                         [--rw PATH]... [--ro PATH]... [--mask PATH]...
 *                         [--mask-file FILE --mask-dir DIR] [--netns-fd FD] [--env-fd FD]
 *                         [--log-new-exec] [--check] -- argv...
 *   exec-sandbox-launcher --source-id
 *   exec-sandbox-launcher --hold-netns
 *
 *   --mode          none: only the PID namespace (tree tracking, no confinement).
 *                   readOnly: a read-only view of the host, Landlock, seccomp, no caps.
 *                   workspaceWrite: plus each --rw PATH read-write.
 *   --abi N         Landlock ABI the plan was made for: every right of that ABI is
 *                   handled, and a kernel that offers less is a setup failure.
 *   --rw PATH       a writable root (bound read-write in the view, full Landlock rights).
 *   --ro PATH       a read-only carve-out inside a writable root (bound read-only again).
 *   --mask PATH     a path the command must never read: --mask-file (for a file) or
 *                   --mask-dir (for a directory), both mode 000, is bound over it.
 *   --net 0         empty network namespace + seccomp socket filter + Landlock TCP rules.
 *   --netns-fd FD   (root) join this empty network namespace instead of creating one:
 *                   setns is ~10x cheaper than creating and later destroying a netns.
 *   --env-fd FD     the command's environment, "NAME=value\0"... read from FD (a memfd),
 *                   installed only at the final execve.
 *   --hold-netns    (root) create an empty network namespace, print "ready", and keep it
 *                   alive until stdin closes: the server opens /proc/PID/ns/net meanwhile.
 *   --log-new-exec  LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON: audit denials after execve.
 *   --check         apply everything, print "ok" and exit 0 instead of exec (self-test).
 *   --pty-fd FD     (first of all flags) the command gets a new pseudo-terminal: it opens
 *                   /dev/ptmx where it runs (in the view: the view's own devpts instance),
 *                   becomes a session leader with the terminal as its controlling terminal
 *                   and stdin/stdout/stderr, and sends the master to the server over FD (a
 *                   unix socket, SCM_RIGHTS). --pty-size is the initial window size. With
 *                   --limits-only the launcher itself is the command (the server started it
 *                   in a new session).
 *
 * Three processes, and why:
 *   launcher (the pid the server knows): sets no_new_privs, unshares the namespaces (mount,
 *       PID, IPC, network; a user namespace first when not root), forks the init, then
 *       waits for the command's wait status and ends with that same status (an exit code,
 *       or the same signal), so the server sees the command's exit exactly when it happens.
 *       It survives catchable signals (the command gets them through the process group).
 *   init (PID 1 of the namespace): builds the filesystem view, drops every capability,
 *       forks the command, reports its status to the launcher, and reaps the rest of the
 *       tree. When it dies the kernel kills every process of the namespace, whatever
 *       setsid or a scrubbed environment did: that is how the server kills a tree. It also
 *       dies when the server dies (it watches a pidfd of the server).
 *   command: (--pty-fd) takes a new pseudo-terminal as its controlling terminal, restricts
 *       itself with Landlock and seccomp and execs the command. Being in a child Landlock
 *       domain it can neither signal nor ptrace the init.
 *
 * Order inside, and why:
 *   1. no_new_privs      required for unprivileged seccomp/Landlock; stops setuid gains.
 *      terminal          give up a controlling terminal inherited from the server.
 *   2. namespaces        unshare needs CAP_SYS_ADMIN (root) or a user namespace, and a
 *                        non-root caller writes /proc/self/uid_map mapping only itself.
 *   3. view (init)       mounts, while the init still has CAP_SYS_ADMIN (Landlock would
 *                        forbid changing the mount topology afterwards).
 *   3b. own terminal     (--pty-fd) in the command once it joined the view, before Landlock
 *                        and the capability drop: /dev/ptmx is the view's devpts (build_dev).
 *   4. Landlock rules    opened while still privileged (root can open any rule path).
 *   5. capabilities      bounding set and securebits need CAP_SETPCAP: dropped last; the
 *                        uid stays the server's (root stays uid 0, with no capability).
 *   6. restrict, seccomp in the command, then execvp with the command's environment.
 *
 * Exit codes: 125 = the sandbox could not be applied (nothing was executed);
 *             127 = the command could not be executed (message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
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

/* The new mount API (Linux 5.12 for mount_setattr); not every libc has the wrappers. */
#ifndef __NR_mount_setattr
#define __NR_mount_setattr 442
#endif
#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#ifndef __NR_open_tree
#define __NR_open_tree 428
#endif
#ifndef __NR_move_mount
#define __NR_move_mount 429
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
struct mnt_attr {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};
#define MNT_ATTR_RDONLY 0x00000001ULL
#define MNT_ATTR_NOSUID 0x00000002ULL
#define MNT_AT_RECURSIVE 0x8000

#define MAX_PATHS 256
#define MAX_ENV_BYTES (64L << 20)

enum mode { MODE_NONE, MODE_READ_ONLY, MODE_WORKSPACE_WRITE };

/* A private /dev/shm per command; its pages are charged to the command's memory. */
#define SHM_DIR "/dev/shm"
#define SHM_OPTIONS "mode=1777,size=256m"

/* Devices every process may write (and read) even in readOnly mode. */
static const char *const writable_devices[] = {
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", NULL,
};

struct path_list {
    const char *paths[MAX_PATHS];
    int count;
};

struct options {
    int abi;
    int mode; /* enum mode, -1 until given */
    struct path_list rw, ro, masks;
    const char *mask_file, *mask_dir;
    int network;
    int netns_fd; /* -1: create a new network namespace */
    int env_fd;   /* -1: the command inherits this program's environment */
    int log_new_exec;
    int check;
    char **command;
};

/* --pty-fd/--pty-size: -1 when the command gets the server's pipes. */
struct pty_request {
    int fd;
    int requested;
    unsigned short rows, cols;
};
static struct pty_request pty = {.fd = -1};

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

static void add_path(struct path_list *list, const char *flag, const char *value) {
    if (list->count == MAX_PATHS)
        FAIL("more than %d %s paths", MAX_PATHS, flag);
    if (value[0] != '/')
        FAIL("%s path is not absolute: '%s'", flag, value);
    list->paths[list->count++] = value;
}

static void parse_args(int argc, char **argv, struct options *opt) {
    memset(opt, 0, sizeof *opt);
    opt->abi = -1;
    opt->mode = -1;
    opt->network = -1;
    opt->netns_fd = -1;
    opt->env_fd = -1;
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
                opt->mode = MODE_READ_ONLY;
            else if (strcmp(value, "workspaceWrite") == 0)
                opt->mode = MODE_WORKSPACE_WRITE;
            else if (strcmp(value, "none") == 0)
                opt->mode = MODE_NONE;
            else
                FAIL("unknown mode '%s'", value);
        } else if (strcmp(a, "--rw") == 0) {
            add_path(&opt->rw, a, value);
        } else if (strcmp(a, "--ro") == 0) {
            add_path(&opt->ro, a, value);
        } else if (strcmp(a, "--mask") == 0) {
            add_path(&opt->masks, a, value);
        } else if (strcmp(a, "--mask-file") == 0) {
            opt->mask_file = value;
        } else if (strcmp(a, "--mask-dir") == 0) {
            opt->mask_dir = value;
        } else if (strcmp(a, "--net") == 0) {
            opt->network = (int)parse_number(a, value, 0, 1);
        } else if (strcmp(a, "--netns-fd") == 0) {
            opt->netns_fd = (int)parse_number(a, value, 3, 1 << 20);
        } else if (strcmp(a, "--env-fd") == 0) {
            opt->env_fd = (int)parse_number(a, value, 3, 1 << 20);
        } else {
            FAIL("unknown option '%s'", a);
        }
    }
    if (opt->mode < 0)
        FAIL("--mode is required");
    if (opt->mode == MODE_NONE) {
        if (opt->rw.count || opt->ro.count || opt->masks.count || opt->netns_fd >= 0 || opt->abi >= 0)
            FAIL("--mode none takes no sandbox options");
        opt->network = 1;
    } else if (opt->abi < 0 || opt->network < 0) {
        FAIL("--abi and --net are required");
    }
    if (opt->netns_fd >= 0 && opt->network)
        FAIL("--netns-fd given with --net 1");
    if (opt->mode == MODE_READ_ONLY && opt->rw.count)
        FAIL("--rw given with --mode readOnly");
    if (opt->masks.count && (opt->mask_file == NULL || opt->mask_dir == NULL))
        FAIL("--mask needs --mask-file and --mask-dir");
    if (!opt->check && i >= argc)
        FAIL("no command after '--'");
    opt->command = argv + i;
}

/* ---- the command's environment ------------------------------------------------ */

/* Read "NAME=value\0"... from the memfd the server wrote. The launcher itself ran with an
 * environment of the server's choosing, so LD_PRELOAD and friends of a request never reach
 * the dynamic loader of this (possibly dynamically linked) program. */
static char **read_command_env(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat(--env-fd %d)", fd);
    if (st.st_size < 0 || st.st_size > MAX_ENV_BYTES)
        FAIL("--env-fd: environment of %lld bytes is too large", (long long)st.st_size);
    size_t size = (size_t)st.st_size;
    char *data = malloc(size + 1);
    if (data == NULL)
        die("malloc");
    size_t done = 0;
    while (done < size) {
        ssize_t n = pread(fd, data + done, size - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("read --env-fd");
        done += (size_t)n;
    }
    close(fd);
    data[size] = '\0';
    size_t count = 0;
    for (size_t i = 0; i < size; i++)
        count += data[i] == '\0';
    char **env = calloc(count + 2, sizeof *env);
    if (env == NULL)
        die("calloc");
    size_t n = 0;
    for (size_t i = 0; i < size; i += strlen(data + i) + 1) {
        if (data[i] != '\0')
            env[n++] = data + i;
    }
    env[n] = NULL;
    return env;
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

/* Take the leading --pty-fd FD --pty-size ROWS:COLS out of argv; returns the new argc. */
static int take_pty_args(int argc, char **argv) {
    int i = 1;
    while (i + 1 < argc && (strcmp(argv[i], "--pty-fd") == 0 || strcmp(argv[i], "--pty-size") == 0)) {
        if (strcmp(argv[i], "--pty-fd") == 0) {
            pty.fd = (int)parse_number("--pty-fd", argv[i + 1], 3, 1 << 20);
        } else {
            char *colon = strchr(argv[i + 1], ':');
            if (colon == NULL)
                FAIL("--pty-size wants ROWS:COLS, not '%s'", argv[i + 1]);
            *colon = '\0';
            pty.rows = (unsigned short)parse_number("--pty-size", argv[i + 1], 1, 65535);
            pty.cols = (unsigned short)parse_number("--pty-size", colon + 1, 1, 65535);
        }
        i += 2;
    }
    if (pty.fd >= 0 && (pty.rows == 0 || fcntl(pty.fd, F_SETFD, FD_CLOEXEC) != 0))
        FAIL("--pty-fd needs --pty-size and an open fd");
    pty.requested = pty.fd >= 0;
    int taken = i - 1;
    for (int j = i; j <= argc; j++) /* argv[argc] is NULL and moves too */
        argv[j - taken] = argv[j];
    return argc - taken;
}

static void send_fd(int sock, int fd) {
    char byte = 'M';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0) {
        if (errno != EINTR)
            die("sendmsg(--pty-fd)");
    }
}

/* In the command, where it will run (inside the view when sandboxed, so /dev/ptmx is the
 * view's own devpts instance): a new pseudo-terminal, this process the leader of a new
 * session whose controlling terminal it is, its slave as stdin/stdout/stderr, and the
 * master sent to the server. The slave is opened from the master (TIOCGPTPEER), never by
 * path, so no other devpts instance can be involved. Only this process (then the command
 * and what it starts) holds the slave: when the last holder is gone the server's read of
 * the master fails with EIO, and that is the process's "closed". */
static void setup_terminal(void) {
    if (pty.fd < 0)
        return;
    int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        die("open /dev/ptmx");
    int unlock = 0;
    if (ioctl(master, TIOCSPTLCK, &unlock) != 0)
        die("ioctl(TIOCSPTLCK)");
    struct winsize size = {.ws_row = pty.rows, .ws_col = pty.cols};
    if (ioctl(master, TIOCSWINSZ, &size) != 0)
        die("ioctl(TIOCSWINSZ)");
    int slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (slave < 0)
        die("ioctl(TIOCGPTPEER)");
    /* The PID-namespace path forks us from the launcher's group; --limits-only was started
     * as a session leader already (setsid would fail with EPERM). */
    if (setsid() < 0 && getsid(0) != getpid())
        die("setsid");
    if (ioctl(slave, TIOCSCTTY, 0) != 0)
        die("ioctl(TIOCSCTTY)");
    send_fd(pty.fd, master);
    close(master);
    close(pty.fd);
    pty.fd = -1;
    for (int fd = 0; fd <= 2; fd++) {
        if (dup2(slave, fd) < 0)
            die("dup2(terminal)");
    }
    if (slave > 2)
        close(slave);
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

/* The launcher creates the PID namespace (its children are born in it) -- and, when not
 * root, the user namespace that must own every other one: it maps only the caller, so file
 * ownership keeps its meaning. */
static void enter_pid_namespace(void) {
    if (geteuid() == 0) {
        if (unshare(CLONE_NEWPID) != 0)
            die("unshare(CLONE_NEWPID)");
        return;
    }
    uid_t uid = geteuid();
    gid_t gid = getegid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0)
        die("unshare(CLONE_NEWUSER|CLONE_NEWPID)");
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
    setup_terminal();
    execvp(argv[2], argv + 2);
    int saved = errno;
    fprintf(stderr, PROG ": cannot execute '%s': %s\n", argv[2], strerror(saved));
    return EXIT_EXEC_FAILED;
}
/* --- limits (end) --- */

/* The init alone enters the mount, IPC and (network off) network namespaces: the launcher
 * stays outside them, so their teardown (a mount namespace's costs ~0.2 ms) happens when
 * the last process of the tree exits, never on the way to reporting the command's exit. */
static void enter_view_namespaces(const struct options *opt) {
    if (opt->netns_fd >= 0) {
        /* setns checks that the fd is a network namespace; the server made it empty. */
        if (setns(opt->netns_fd, CLONE_NEWNET) != 0)
            die("setns(--netns-fd %d)", opt->netns_fd);
        close(opt->netns_fd);
    }
    int flags = CLONE_NEWNS | CLONE_NEWIPC;
    if (!opt->network && opt->netns_fd < 0)
        flags |= CLONE_NEWNET;
    if (unshare(flags) != 0)
        die("unshare(0x%x)", flags);
}

/* ---- the filesystem view (in the init, inside the new mount namespace) ---------- */

static int exists(const char *path, struct stat *st) {
    if (stat(path, st) == 0)
        return 1;
    if (errno == ENOENT || errno == ENOTDIR)
        return 0;
    die("stat %s", path);
}

static void bind_onto_itself(const char *path) {
    if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) != 0)
        die("bind %s", path);
}

static void set_mount_attr(const char *path, int flags, uint64_t set, uint64_t clear) {
    struct mnt_attr attr = {.attr_set = set, .attr_clr = clear};
    if (syscall(__NR_mount_setattr, AT_FDCWD, path, flags, &attr, sizeof attr) != 0)
        die("mount_setattr %s", path);
}

/* The view's /dev is a new one, like bubblewrap's --dev: the host's holds other sessions'
 * terminals (/dev/pts/N, the consoles /dev/ttyN, serial ports), which the read-only view and
 * Landlock's read rights still let a root command (uid 0 owns them; opening for reading needs
 * no capability) open: it could read another session's pending keystrokes. Raw disks and the
 * kernel log are there too (the kernel refuses them to a capability-less root today; nothing
 * here depends on that). Here: a tmpfs holding the
 * memory devices and /dev/tty (bound from the host's nodes: a user namespace cannot mknod),
 * the usual /proc/self/fd links, a private /dev/shm, and a devpts instance of its own on
 * /dev/pts with /dev/ptmx pointing into it -- a terminal the command is given (--pty-fd) is
 * allocated there, so `tty` shows /dev/pts/0 and no host pty is reachable. The tmpfs is made
 * read-only once filled. */
static const char *const dev_nodes[] = {"null", "zero", "full", "random", "urandom", "tty", NULL};
static const char *const dev_links[][2] = {
    {"fd", "/proc/self/fd"},     {"stdin", "/proc/self/fd/0"}, {"stdout", "/proc/self/fd/1"},
    {"stderr", "/proc/self/fd/2"}, {"ptmx", "pts/ptmx"},       {NULL, NULL},
};
#define DEV_PTS_OPTIONS "newinstance,ptmxmode=0666,mode=0620"

static void build_dev(void) {
    int nodes[sizeof dev_nodes / sizeof dev_nodes[0]];
    for (int i = 0; dev_nodes[i]; i++) {
        char path[64];
        snprintf(path, sizeof path, "/dev/%s", dev_nodes[i]);
        /* A detached bind mount of the host's node, moved into the new /dev below. */
        nodes[i] = (int)syscall(__NR_open_tree, AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
        if (nodes[i] < 0 && errno != ENOENT)
            die("open_tree %s", path);
    }
    if (mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k") != 0)
        die("mount /dev");
    for (int i = 0; dev_nodes[i]; i++) {
        if (nodes[i] < 0)
            continue;
        char path[64];
        snprintf(path, sizeof path, "/dev/%s", dev_nodes[i]);
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0666);
        if (fd < 0)
            die("create %s", path);
        close(fd);
        if (syscall(__NR_move_mount, nodes[i], "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH) != 0)
            die("move_mount %s", path);
        close(nodes[i]);
    }
    for (int i = 0; dev_links[i][0]; i++) {
        char path[64];
        snprintf(path, sizeof path, "/dev/%s", dev_links[i][0]);
        if (symlink(dev_links[i][1], path) != 0)
            die("symlink %s", path);
    }
    if (mkdir("/dev/pts", 0755) != 0 || mkdir(SHM_DIR, 01777) != 0)
        die("mkdir /dev/pts, " SHM_DIR);
    if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, DEV_PTS_OPTIONS) != 0)
        die("mount /dev/pts");
    /* POSIX shared memory and semaphores (multiprocessing's locks) live in /dev/shm: the
     * command gets an empty one of its own, as its SysV IPC namespace is its own. */
    if (mount("tmpfs", SHM_DIR, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, SHM_OPTIONS) != 0)
        die("mount %s", SHM_DIR);
    set_mount_attr("/dev", 0, MNT_ATTR_RDONLY, 0);
}

/* bubblewrap's view built in place: the host's tree, made read-only (and nosuid) in one
 * recursive mount_setattr, with the writable roots bound onto themselves first and made
 * writable again, the carve-outs bound again inside them (so they stay read-only), the
 * masks bound over what they hide, and a /proc that shows only this PID namespace. Landlock
 * still applies on top; the view is what refuses chmod, chown, utimes, xattrs, rename and
 * link (Landlock has no right for most of them), for root and non-root alike. */
static void build_view(const struct options *opt) {
    struct stat st;
    /* Nothing we mount may propagate back to the host's namespace. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        die("make / private");
    for (int i = 0; i < opt->rw.count; i++)
        bind_onto_itself(opt->rw.paths[i]);
    for (int i = 0; i < opt->ro.count; i++) {
        if (exists(opt->ro.paths[i], &st))
            bind_onto_itself(opt->ro.paths[i]);
    }
    for (int i = 0; i < opt->masks.count; i++) {
        const char *path = opt->masks.paths[i];
        if (!exists(path, &st))
            continue;
        const char *source = S_ISDIR(st.st_mode) ? opt->mask_dir : opt->mask_file;
        if (mount(source, path, NULL, MS_BIND, NULL) != 0)
            die("mask %s", path);
    }
    set_mount_attr("/", MNT_AT_RECURSIVE, MNT_ATTR_RDONLY | MNT_ATTR_NOSUID, 0);
    for (int i = 0; i < opt->rw.count; i++)
        set_mount_attr(opt->rw.paths[i], 0, 0, MNT_ATTR_RDONLY);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL) != 0)
        die("mount /proc");
    build_dev();
}
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

/* Build the ruleset while the rule paths can still be opened with every capability; the
 * command (not the init) restricts itself with it, so the init stays outside the domain and
 * the command can neither ptrace nor signal it. */
static int prepare_landlock(const struct options *opt) {
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
         * type into the operator's shell -- unless the command was given a terminal of its
         * own (--pty-fd): then /dev/tty is that one (less, vi, sudo reopen it). */
        uint64_t rights = device_rights;
        if (strcmp(*dev, "/dev/tty") != 0 || pty.requested)
            rights |= LL_FS_IOCTL_DEV & handled_fs;
        add_path_rule(ruleset, *dev, rights, 0);
    }
    for (int i = 0; i < opt->rw.count; i++)
        add_path_rule(ruleset, opt->rw.paths[i], handled_fs, 1);
    return ruleset;
}

/* Rules are inode-based, so the ruleset above can be built before the command joins the
 * view (the binds share the host's inodes); /proc and /dev/shm are the view's own, so their
 * rules are added after. `echo x > /dev/stderr` opens /proc/self/fd/2 with O_CREAT, and the kernel asks the
 * create hook about a /proc/PID/fd entry that is not yet cached before it finds the entry
 * exists: Landlock would log a denial for an open that then succeeds. procfs cannot create
 * files at all, so allowing the attempt changes nothing but the log. */
static void add_view_rules(const struct options *opt, int ruleset) {
    add_path_rule(ruleset, "/proc", LL_FS_MAKE_REG, 0);
    /* The private /dev/shm (the view's own tmpfs) is writable in both modes. */
    add_path_rule(ruleset, SHM_DIR, fs_rights_for_abi(opt->abi), 0);
    /* A command with a terminal may reopen it (/dev/pts/0) and make more (script, tmux):
     * the view's devpts is its own instance, no host terminal is in it. */
    if (pty.requested)
        add_path_rule(ruleset, "/dev/pts",
                      (LL_FS_READ_FILE | LL_FS_WRITE_FILE | LL_FS_TRUNCATE | LL_FS_IOCTL_DEV) & fs_rights_for_abi(opt->abi), 0);
}

static void restrict_self(const struct options *opt, int ruleset) {
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

/* ---- capabilities --------------------------------------------------------------- */

/* Each drop is a credential commit (~2 us): the command drops all but `keep` while the init
 * builds the view, and the rest once it joined it. */
static void clear_bounding_set(uint64_t keep) {
    for (int cap = 0; cap < 64; cap++) {
        if ((keep >> cap) & 1)
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno == EINVAL) /* past CAP_LAST_CAP */
                return;
            die("PR_CAPBSET_DROP %d", cap);
        }
    }
}

/* The command keeps the server's uid and gid (root stays uid 0), with no capability at all:
 * bounding set empty, "uid 0 means nothing" locked (no capabilities from root on exec, none
 * kept across setuid, no ambient raise) for this process and everything it starts, then
 * every set cleared and the result verified. With the read-only view and Landlock that is
 * what makes root in a container safe to sandbox without a uid drop. */
static void drop_capabilities(void) {
    clear_bounding_set(0);
    if (prctl(PR_SET_SECUREBITS,
              SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                  SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                  SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
              0, 0, 0) != 0)
        die("PR_SET_SECUREBITS");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        die("PR_CAP_AMBIENT_CLEAR_ALL");
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(__NR_capset, &header, data) != 0)
        die("capset(0)");
    if (syscall(__NR_capget, &header, data) != 0)
        die("capget");
    for (int i = 0; i < 2; i++) {
        if (data[i].effective || data[i].permitted || data[i].inheritable)
            FAIL("capabilities are still held after the drop");
    }
    if (prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN, 0, 0, 0) != 0)
        FAIL("the bounding set is not empty after the drop");
}

/* ---- the command (the launcher's second child, PID 2 of the namespace) ------- */

static void reset_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL); /* EINVAL for SIGKILL/SIGSTOP and the RT range gaps: fine */
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* What the command needs until it joined the view: setns, and dropping the rest. */
#define KEEP_UNTIL_JOINED ((1ULL << CAP_SYS_ADMIN) | (1ULL << CAP_SETPCAP))

/* Prepare what does not need the view (the Landlock ruleset, most of the capability drop)
 * while the init builds it; then join it (mount, IPC and, network off, network namespace)
 * through a pidfd of the init, confine itself and exec. It is the launcher's own child, so
 * the launcher's wait reports its exit and its resource usage, exactly as if unlaunched. */
static void exec_command(const struct options *opt, int ready_fd, int let_go_fd, int init_pidfd,
                         char **command_env, const char *cwd) {
    if (opt->mode != MODE_NONE) {
        int ruleset = prepare_landlock(opt);
        clear_bounding_set(KEEP_UNTIL_JOINED);
        char byte;
        ssize_t n;
        while ((n = read(ready_fd, &byte, 1)) < 0 && errno == EINTR) {
        }
        if (n != 1)
            _exit(EXIT_SETUP_FAILED); /* the init said why on stderr */
        close(ready_fd);
        int flags = CLONE_NEWNS | CLONE_NEWIPC | (opt->network ? 0 : CLONE_NEWNET);
        if (setns(init_pidfd, flags) != 0)
            die("setns(init, 0x%x)", flags);
        close(init_pidfd);
        /* setns put us at the namespace's root: re-resolve the cwd in the view. */
        if (cwd == NULL || chdir(cwd) != 0)
            die("chdir %s", cwd ? cwd : "(unknown cwd)");
        if (!opt->check)
            setup_terminal(); /* in the view: its own devpts, before Landlock applies */
        add_view_rules(opt, ruleset);
        drop_capabilities();
        restrict_self(opt, ruleset);
        if (!opt->network)
            apply_seccomp(opt->abi >= 4);
    }
    if (opt->mode == MODE_NONE && !opt->check)
        setup_terminal(); /* unsandboxed: a pty of the host's devpts */
    /* End of file once the launcher and the init dropped their copies of the command's
     * stdio (from its first instruction the command alone holds them: a command that closes
     * stdin sees the server's writes fail) and the launcher passed on the signals that came
     * before this process existed. Until then every signal stays blocked (pending ones,
     * sent twice, count once); now they take their default action. */
    char byte;
    while (read(let_go_fd, &byte, 1) < 0 && errno == EINTR) {
    }
    close(let_go_fd);
    reset_signals();
    if (opt->check) {
        printf("ok %s\n", LAUNCHER_SOURCE_ID);
        fflush(stdout);
        _exit(0);
    }
    if (command_env != NULL)
        environ = command_env; /* execvp searches the command's PATH */
    execvp(opt->command[0], opt->command);
    int saved = errno;
    fprintf(stderr, PROG ": cannot execute '%s': %s\n", opt->command[0], strerror(saved));
    _exit(EXIT_EXEC_FAILED);
}

/* ---- the init (PID 1 of the namespace) ------------------------------------------ */

/* Signals the init takes through a signalfd. The server signals every member of the tree
 * itself (group and each pid), so the init forwards nothing: it only must not die of them
 * (a PID 1 ignores signals without a handler from inside its namespace anyway). */
static void init_signal_set(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGCHLD);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGQUIT);
    sigaddset(set, SIGUSR1);
    sigaddset(set, SIGUSR2);
    sigaddset(set, SIGPIPE);
    sigaddset(set, SIGALRM);
}

static void quiet_std_fds(void) {
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0)
        die("open /dev/null");
    for (int fd = 0; fd <= 2; fd++) {
        if (dup2(null, fd) < 0)
            die("dup2");
    }
    close(null);
}

/* Reap every orphan of the namespace (they are re-parented here), until the launcher is
 * gone (it ends right after the command) and no process is left; or end at once when the
 * server is gone: the kernel then kills whatever is left, as the init of a PID namespace
 * dies. Killing this process is how the whole tree is killed, whatever setsid did. */
static void supervise(int launcher_fd, int server_pidfd) __attribute__((noreturn));
static void supervise(int launcher_fd, int server_pidfd) {
    sigset_t set;
    init_signal_set(&set);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        die("signalfd");
    int launcher_gone = 0;
    for (;;) {
        for (;;) {
            pid_t pid = waitpid(-1, NULL, WNOHANG);
            if (pid > 0)
                continue;
            if (pid < 0 && errno == EINTR)
                continue;
            if (pid < 0 && launcher_gone)
                _exit(0); /* ECHILD: the command and every descendant are gone */
            break;
        }
        struct pollfd fds[3] = {
            {.fd = sfd, .events = POLLIN},
            {.fd = launcher_gone ? -1 : launcher_fd, .events = POLLIN},
            {.fd = server_pidfd, .events = POLLIN},
        };
        if (poll(fds, 3, -1) < 0 && errno != EINTR)
            _exit(EXIT_SETUP_FAILED);
        if (fds[2].revents & (POLLIN | POLLHUP))
            _exit(1); /* the server died without killing this tree: take it down */
        if (fds[1].revents & (POLLIN | POLLHUP | POLLERR))
            launcher_gone = 1;
        struct signalfd_siginfo info;
        while (read(sfd, &info, sizeof info) > 0) {
        }
    }
}

/* Build the namespaces and the view, tell the command (one byte on ready_fd; end of file
 * without it means setup failed), drop every capability, then supervise. */
static void run_init(const struct options *opt, int ready_fd, int built_fd, int let_go_fd,
                     int launcher_fd, int server_pidfd) {
    sigset_t set;
    init_signal_set(&set);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        die("sigprocmask");
    if (opt->mode != MODE_NONE) {
        enter_view_namespaces(opt);
        build_view(opt);
    }
    /* Neither the init nor the launcher holds the command's stdio: EOF on stdout means the
     * command's tree let go of it, and a command that closes stdin sees writes fail. */
    quiet_std_fds();
    close(let_go_fd);
    /* The launcher learns the view was built: a command killed before this byte was
     * killed by this process's failed setup (the init's exit takes the namespace down). */
    char built = 1;
    if (write(built_fd, &built, 1) != 1)
        _exit(EXIT_SETUP_FAILED);
    close(built_fd);
    /* Sandboxed, the command waits for this byte (the view is built); unsandboxed, the
     * launcher reads it before it exits, so the init never holds the pipes past the exit
     * the server sees (`closed` can follow `exited` at once). */
    char ready = 1;
    if (write(ready_fd, &ready, 1) != 1 && opt->mode != MODE_NONE)
        _exit(EXIT_SETUP_FAILED); /* the command is gone already */
    if (opt->mode != MODE_NONE)
        drop_capabilities(); /* off the command's path: it is already on its way */
    close(ready_fd);
    supervise(launcher_fd, server_pidfd);
}

/* ---- the launcher: the pid the server waits for --------------------------------- */

/* The catchable signals that reached this process before the command existed (it runs
 * with every signal blocked while it sets this, so the update cannot tear). */
static volatile sig_atomic_t caught_early;

static void note_signal(int sig) { caught_early |= 1 << sig; }

/* End the way the command ended: its exit code, or killed by its signal. */
static void mirror_status(int status) __attribute__((noreturn));
static void mirror_status(int status) {
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        /* No core of this program for the command's crash. */
        struct rlimit none = {0, 0};
        setrlimit(RLIMIT_CORE, &none);
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
        signal(sig, SIG_DFL);
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        sigprocmask(SIG_UNBLOCK, &one, NULL);
        raise(sig);
        _exit(128 + sig); /* a signal whose default is not to terminate */
    }
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : EXIT_SETUP_FAILED);
}

/* False only when the init ended without the byte that says the view was built (end of
 * file): the kernel killed the waiting command as the namespace's init died. An init still
 * building (EAGAIN) means the command was killed from outside, and that is mirrored. */
static int view_was_built(int built_fd) {
    char byte;
    ssize_t n;
    while ((n = read(built_fd, &byte, 1)) < 0 && errno == EINTR) {
    }
    return n != 0;
}

static pid_t wait_for(pid_t pid, int *status) {
    for (;;) {
        pid_t got = waitpid(pid, status, 0);
        if (got >= 0 || errno != EINTR)
            return got;
    }
}

static int launch(const struct options *opt, char **command_env) {
    /* The server's pid, watched by the init: it outlives this process when a descendant
     * keeps running after the command exited. */
    int server_pidfd = (int)syscall(__NR_pidfd_open, getppid(), 0);
    if (server_pidfd >= 0)
        fcntl(server_pidfd, F_SETFD, FD_CLOEXEC);
    char cwd[4096];
    const char *command_cwd = getcwd(cwd, sizeof cwd) != NULL ? cwd : NULL;
    /* Catchable signals reach the command through the process group; this process must
     * live on to report how the command ended. Caught (not ignored: the command's exec
     * resets a handler, never an SIG_IGN), and before the forks: the command may print
     * "ready" and be signalled before this process is scheduled again. */
    struct sigaction sa = {.sa_handler = note_signal, .sa_flags = SA_RESTART};
    sigfillset(&sa.sa_mask);
    const int caught[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM};
    for (size_t i = 0; i < sizeof caught / sizeof caught[0]; i++)
        sigaction(caught[i], &sa, NULL);
    enter_pid_namespace();
    int ready[2], alive[2], built[2], let_go[2];
    if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(alive, O_CLOEXEC) != 0 ||
        pipe2(built, O_CLOEXEC | O_NONBLOCK) != 0 || pipe2(let_go, O_CLOEXEC) != 0)
        die("pipe2");
    pid_t init = fork(); /* PID 1 of the new namespace */
    if (init < 0)
        die("fork (init)");
    if (init == 0) {
        close(ready[0]);
        close(alive[1]);
        close(built[0]);
        close(let_go[0]);
        if (pty.fd >= 0)
            close(pty.fd); /* only the command talks to the server about the terminal */
        run_init(opt, ready[1], built[1], let_go[1], alive[0], server_pidfd);
    }
    close(ready[1]);
    close(alive[0]);
    close(built[1]);
    if (server_pidfd >= 0)
        close(server_pidfd);
    if (opt->netns_fd >= 0)
        close(opt->netns_fd);
    int init_pidfd = (int)syscall(__NR_pidfd_open, init, 0);
    if (init_pidfd < 0)
        die("pidfd_open(init)");
    /* Every signal stays blocked across the fork: the command unblocks them only after the
     * signals sent before it existed were passed on (see exec_command), else one sent right
     * after the start would hit the handler it inherits, or miss it, and be lost. */
    sigset_t all, before;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &before);
    pid_t command = fork(); /* PID 2: the command */
    if (command < 0)
        die("fork (command)");
    if (command == 0) {
        close(built[0]);
        close(let_go[1]);
        exec_command(opt, ready[0], let_go[0], init_pidfd, command_env, command_cwd);
    }
    close(let_go[0]);
    if (opt->mode != MODE_NONE)
        close(ready[0]);
    close(init_pidfd);
    if (pty.fd >= 0)
        close(pty.fd); /* a command that dies before sending the master: end of file */
    quiet_std_fds();
    /* Caught before the fork, or pending here now: the command may have missed them. */
    sigset_t pending;
    if (sigpending(&pending) != 0)
        sigemptyset(&pending);
    for (size_t i = 0; i < sizeof caught / sizeof caught[0]; i++) {
        if ((caught_early & (1 << caught[i])) || sigismember(&pending, caught[i]))
            kill(command, caught[i]);
    }
    sigprocmask(SIG_SETMASK, &before, NULL);
    close(let_go[1]); /* the command may run now */
    int status; /* alive[1] stays open until we exit: the init learns we are gone */
    if (wait_for(command, &status) < 0)
        die("waitpid(command)");
    if (opt->mode == MODE_NONE) {
        /* The init has let go of the command's stdio (or died) once this returns. */
        char byte;
        while (read(ready[0], &byte, 1) < 0 && errno == EINTR) {
        }
    }
    if (WIFSIGNALED(status) && !view_was_built(built[0]))
        _exit(EXIT_SETUP_FAILED); /* the init's failed setup killed it; the init said why */
    mirror_status(status);
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
    argc = take_pty_args(argc, argv);
    /* --- limits (begin) --- */
    /* Before the namespaces and the forks: the init, the command and every descendant are
     * inside the cgroups and inherit the rlimits. */
    struct limits lim;
    argc = take_limit_args(argc, argv, &lim);
    apply_limits(&lim);
    if (lim.only)
        return exec_limited(argc, argv);
    /* --- limits (end) --- */
    struct options opt;
    parse_args(argc, argv, &opt);
    char **command_env = opt.env_fd >= 0 ? read_command_env(opt.env_fd) : NULL;

    if (opt.mode != MODE_NONE && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        die("PR_SET_NO_NEW_PRIVS");
    if (opt.mode != MODE_NONE)
        detach_terminal();
    return launch(&opt, command_env);
}
