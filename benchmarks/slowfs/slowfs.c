/*
 * slowfs: a latency-injecting FUSE pass-through file system for pcopy's slow-storage benchmark.
 *
 *     slowfs [--delay-ms MS] [--threads N] [--cache-s S] [--stats FILE] [--debug] BACKING MOUNTPOINT
 *
 * Mounts BACKING at MOUNTPOINT. Every request the kernel sends that a network file system would
 * send to its server (LOOKUP, GETATTR, SETATTR, OPEN, CREATE, READ, WRITE, READDIR, MKDIR, RENAME,
 * UNLINK, FLUSH, RELEASE, FSYNC, ...) first sleeps MS milliseconds, then does the real work on
 * BACKING. Nothing is cached: entry, attribute and negative timeouts are 0 (like NFS with
 * actimeo=0), the page cache is dropped at every open, writes go straight through. --cache-s
 * gives names and attributes a timeout of S seconds instead (a caching FUSE mount, for tests).
 *
 * The sleep is per request and the requests are served by a pool of up to N threads (default
 * 256; libfuse's own default of 10 would cap the requests in flight), so concurrent requests
 * overlap as they would on a network share: 8 parallel stats take about 1 x MS, not 8 x MS.
 *
 * Counters (one per request type, plus the summed time requests spent in the daemon, from which
 * "requests in flight on average" follows): written as JSON to FILE on SIGUSR1, reset and written
 * on SIGUSR2, and written once more at unmount. Every write bumps "seq", so a reader that sent a
 * signal waits until seq changes; the file is replaced atomically (write + rename).
 *
 * Not implemented on purpose (the kernel is answered ENOSYS once and then stops asking, so they
 * cost no round trip, as on NFS v3): extended attributes, locks, lseek, poll, ioctl.
 *
 * Written for pcopy (MIT licence) against libfuse 3's low-level API: inodes are kept as O_PATH
 * descriptors keyed by (st_dev, st_ino), so every operation is a *at call relative to one.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312 /* 3.12: fuse_loop_cfg_* (max_threads; older versions cap at 10 threads) */

#include <fuse_lowlevel.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------
 * Counters */

#define OPS(X) X(LOOKUP) X(GETATTR) X(SETATTR) X(READLINK) X(MKNOD) X(MKDIR) X(UNLINK) X(RMDIR) \
    X(SYMLINK) X(RENAME) X(LINK) X(OPEN) X(READ) X(WRITE) X(FLUSH) X(RELEASE) X(FSYNC)        \
    X(OPENDIR) X(READDIR) X(RELEASEDIR) X(FSYNCDIR) X(STATFS) X(CREATE) X(FALLOCATE)          \
    X(COPY_FILE_RANGE)
#define AS_ENUM(name) OP_##name,
#define AS_NAME(name) #name,
enum op { OPS(AS_ENUM) OP_COUNT };
static const char *const op_names[] = { OPS(AS_NAME) };

static uint64_t counts[OP_COUNT];
static uint64_t busy_ns;     /* summed time from request start to reply, all requests */
static int64_t in_flight;    /* requests being served right now */
static uint64_t max_in_flight;
static uint64_t seq;
static struct timespec delay_ts;
static const char *stats_path;
static double cache_s; /* entry and attribute timeout (--cache-s; 0: nothing cached) */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One request begins: count it, then wait the injected latency. Returns its start time. */
static uint64_t begin(enum op op)
{
    uint64_t start = now_ns();
    __atomic_add_fetch(&counts[op], 1, __ATOMIC_RELAXED);
    uint64_t now = (uint64_t)__atomic_add_fetch(&in_flight, 1, __ATOMIC_RELAXED);
    uint64_t seen = __atomic_load_n(&max_in_flight, __ATOMIC_RELAXED);
    while (now > seen &&
           !__atomic_compare_exchange_n(&max_in_flight, &seen, now, 1, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
    }
    if (delay_ts.tv_sec || delay_ts.tv_nsec) {
        struct timespec left = delay_ts;
        while (clock_nanosleep(CLOCK_MONOTONIC, 0, &left, &left) == EINTR) {
        }
    }
    return start;
}

static void end(uint64_t start)
{
    __atomic_add_fetch(&busy_ns, now_ns() - start, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&in_flight, 1, __ATOMIC_RELAXED);
}

/* Writes the counters as JSON to stats_path (atomically: a temporary file renamed over it). */
static void write_stats(int reset)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    if (!stats_path)
        return;
    pthread_mutex_lock(&lock);
    uint64_t snap[OP_COUNT];
    for (int i = 0; i < OP_COUNT; i++)
        snap[i] = reset ? __atomic_exchange_n(&counts[i], 0, __ATOMIC_RELAXED)
                        : __atomic_load_n(&counts[i], __ATOMIC_RELAXED);
    uint64_t busy = reset ? __atomic_exchange_n(&busy_ns, 0, __ATOMIC_RELAXED)
                          : __atomic_load_n(&busy_ns, __ATOMIC_RELAXED);
    uint64_t peak = reset ? __atomic_exchange_n(&max_in_flight, 0, __ATOMIC_RELAXED)
                          : __atomic_load_n(&max_in_flight, __ATOMIC_RELAXED);
    seq++;
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp", stats_path);
    FILE *fh = fopen(tmp, "w");
    if (fh) {
        /* After a reset the snapshot holds what was counted before it: report zeros then. */
        fprintf(fh, "{\"seq\": %" PRIu64 ", \"reset\": %s, \"in_flight\": %" PRId64
                    ", \"max_in_flight\": %" PRIu64 ", \"busy_ns\": %" PRIu64 ", \"ops\": {",
                seq, reset ? "true" : "false", __atomic_load_n(&in_flight, __ATOMIC_RELAXED),
                reset ? 0 : peak, reset ? 0 : busy);
        for (int i = 0; i < OP_COUNT; i++)
            fprintf(fh, "%s\"%s\": %" PRIu64, i ? ", " : "", op_names[i], reset ? 0 : snap[i]);
        fprintf(fh, "}}\n");
        if (fclose(fh) == 0)
            rename(tmp, stats_path);
    }
    pthread_mutex_unlock(&lock);
}

/* SIGUSR1: write the counters; SIGUSR2: reset them and write. A dedicated thread takes these
 * signals with sigwait (they are blocked everywhere else), so no work happens in a handler. */
static void *stats_thread(void *arg)
{
    sigset_t *set = arg;
    for (;;) {
        int sig;
        if (sigwait(set, &sig) == 0)
            write_stats(sig == SIGUSR2);
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Inodes: one O_PATH descriptor each, found by (dev, ino) in a hash table. The kernel's lookup
 * count (nlookup) says when an inode may go: FORGET lowers it, and at 0 the descriptor closes. */

struct inode {
    struct inode *next; /* hash chain */
    int fd;
    dev_t dev;
    ino_t ino;
    uint64_t nlookup;
};

#define BUCKETS 65536 /* tens of thousands of files per run: short chains */
static struct inode *table[BUCKETS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct inode root_inode;

static size_t bucket(dev_t dev, ino_t ino)
{
    return (size_t)((ino * 0x9E3779B97F4A7C15ull) ^ dev) % BUCKETS;
}

static struct inode *get_inode(fuse_ino_t ino)
{
    return ino == FUSE_ROOT_ID ? &root_inode : (struct inode *)(uintptr_t)ino;
}

static int ifd(fuse_ino_t ino)
{
    return get_inode(ino)->fd;
}

static void proc_path(char *buf, size_t size, int fd)
{
    snprintf(buf, size, "/proc/self/fd/%d", fd);
}

/* Resolves name in parent and fills e (with timeouts 0: the kernel asks again every time).
 * Find-or-insert happens under one lock, so concurrent lookups of one file share an inode. */
static int do_lookup(fuse_ino_t parent, const char *name, struct fuse_entry_param *e)
{
    memset(e, 0, sizeof *e);
    int fd = openat(ifd(parent), name, O_PATH | O_NOFOLLOW);
    if (fd == -1)
        return errno;
    if (fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1) {
        int err = errno;
        close(fd);
        return err;
    }
    size_t b = bucket(e->attr.st_dev, e->attr.st_ino);
    pthread_mutex_lock(&table_lock);
    struct inode *node = table[b];
    while (node && !(node->dev == e->attr.st_dev && node->ino == e->attr.st_ino))
        node = node->next;
    if (node) {
        node->nlookup++;
        pthread_mutex_unlock(&table_lock);
        close(fd);
    } else {
        node = calloc(1, sizeof *node);
        if (!node) {
            pthread_mutex_unlock(&table_lock);
            close(fd);
            return ENOMEM;
        }
        node->fd = fd;
        node->dev = e->attr.st_dev;
        node->ino = e->attr.st_ino;
        node->nlookup = 1;
        node->next = table[b];
        table[b] = node;
        pthread_mutex_unlock(&table_lock);
    }
    e->ino = (uintptr_t)node;
    e->entry_timeout = e->attr_timeout = cache_s;
    return 0;
}

static void forget_one(fuse_ino_t ino, uint64_t n)
{
    struct inode *node = get_inode(ino);
    if (node == &root_inode)
        return;
    pthread_mutex_lock(&table_lock);
    node->nlookup -= n < node->nlookup ? n : node->nlookup;
    if (node->nlookup == 0) {
        struct inode **link = &table[bucket(node->dev, node->ino)];
        while (*link != node)
            link = &(*link)->next;
        *link = node->next;
        pthread_mutex_unlock(&table_lock);
        close(node->fd);
        free(node);
        return;
    }
    pthread_mutex_unlock(&table_lock);
}

/* ---------------------------------------------------------------------------------------------
 * Operations. Each one: begin (count + delay), the real call, the reply, end. */

static void reply_entry_or_err(fuse_req_t req, fuse_ino_t parent, const char *name, int err)
{
    struct fuse_entry_param e;
    if (!err)
        err = do_lookup(parent, name, &e);
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_entry(req, &e);
}

static void sf_init(void *userdata, struct fuse_conn_info *conn)
{
    (void)userdata;
    /* No writeback cache (writes reach the "server" one request each, as they are issued), no
     * readdirplus (every name a tool examines is a LOOKUP, as with attribute caching off). */
    conn->want &= ~(unsigned)(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_READDIRPLUS |
                              FUSE_CAP_READDIRPLUS_AUTO);
}

static void sf_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    uint64_t t = begin(OP_LOOKUP);
    struct fuse_entry_param e;
    int err = do_lookup(parent, name, &e);
    if (err == ENOENT) {
        /* A negative entry with timeout 0: nothing cached. */
        memset(&e, 0, sizeof e);
        fuse_reply_entry(req, &e);
    } else if (err) {
        fuse_reply_err(req, err);
    } else {
        fuse_reply_entry(req, &e);
    }
    end(t);
}

static void sf_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    forget_one(ino, nlookup);
    fuse_reply_none(req);
}

static void sf_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    for (size_t i = 0; i < count; i++)
        forget_one(forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
}

static void sf_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    uint64_t t = begin(OP_GETATTR);
    struct stat st;
    int res = fi ? fstat((int)fi->fh, &st)
                 : fstatat(ifd(ino), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    if (res == -1)
        fuse_reply_err(req, errno);
    else
        fuse_reply_attr(req, &st, cache_s);
    end(t);
}

static void sf_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
                       struct fuse_file_info *fi)
{
    uint64_t t = begin(OP_SETATTR);
    char path[64];
    int fd = ifd(ino);
    int res = 0;
    proc_path(path, sizeof path, fd);
    if (valid & FUSE_SET_ATTR_MODE)
        res = fi ? fchmod((int)fi->fh, attr->st_mode) : chmod(path, attr->st_mode);
    if (res == 0 && (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
        uid_t uid = (valid & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
        gid_t gid = (valid & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
        res = fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    }
    if (res == 0 && (valid & FUSE_SET_ATTR_SIZE))
        res = fi ? ftruncate((int)fi->fh, attr->st_size) : truncate(path, attr->st_size);
    if (res == 0 && (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME))) {
        struct timespec tv[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
        if (valid & FUSE_SET_ATTR_ATIME_NOW)
            tv[0].tv_nsec = UTIME_NOW;
        else if (valid & FUSE_SET_ATTR_ATIME)
            tv[0] = attr->st_atim;
        if (valid & FUSE_SET_ATTR_MTIME_NOW)
            tv[1].tv_nsec = UTIME_NOW;
        else if (valid & FUSE_SET_ATTR_MTIME)
            tv[1] = attr->st_mtim;
        res = fi ? futimens((int)fi->fh, tv) : utimensat(AT_FDCWD, path, tv, 0);
    }
    struct stat st;
    if (res == 0)
        res = fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    if (res == -1)
        fuse_reply_err(req, errno);
    else
        fuse_reply_attr(req, &st, cache_s);
    end(t);
}

static void sf_readlink(fuse_req_t req, fuse_ino_t ino)
{
    uint64_t t = begin(OP_READLINK);
    char buf[PATH_MAX + 1];
    ssize_t n = readlinkat(ifd(ino), "", buf, sizeof buf);
    if (n == -1)
        fuse_reply_err(req, errno);
    else if (n == (ssize_t)sizeof buf)
        fuse_reply_err(req, ENAMETOOLONG);
    else {
        buf[n] = '\0';
        fuse_reply_readlink(req, buf);
    }
    end(t);
}

static void sf_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    uint64_t t = begin(OP_MKNOD);
    int res = mknodat(ifd(parent), name, mode, rdev);
    reply_entry_or_err(req, parent, name, res == -1 ? errno : 0);
    end(t);
}

static void sf_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    uint64_t t = begin(OP_MKDIR);
    int res = mkdirat(ifd(parent), name, mode);
    reply_entry_or_err(req, parent, name, res == -1 ? errno : 0);
    end(t);
}

static void sf_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    uint64_t t = begin(OP_SYMLINK);
    int res = symlinkat(link, ifd(parent), name);
    reply_entry_or_err(req, parent, name, res == -1 ? errno : 0);
    end(t);
}

static void sf_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char *name)
{
    uint64_t t = begin(OP_LINK);
    char path[64];
    proc_path(path, sizeof path, ifd(ino));
    int res = linkat(AT_FDCWD, path, ifd(parent), name, AT_SYMLINK_FOLLOW);
    reply_entry_or_err(req, parent, name, res == -1 ? errno : 0);
    end(t);
}

static void sf_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    uint64_t t = begin(OP_UNLINK);
    int res = unlinkat(ifd(parent), name, 0);
    fuse_reply_err(req, res == -1 ? errno : 0);
    end(t);
}

static void sf_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    uint64_t t = begin(OP_RMDIR);
    int res = unlinkat(ifd(parent), name, AT_REMOVEDIR);
    fuse_reply_err(req, res == -1 ? errno : 0);
    end(t);
}

static void sf_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    uint64_t t = begin(OP_RENAME);
    int res = renameat2(ifd(parent), name, ifd(newparent), newname, flags);
    fuse_reply_err(req, res == -1 ? errno : 0);
    end(t);
}

static void sf_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    uint64_t t = begin(OP_OPEN);
    char path[64];
    proc_path(path, sizeof path, ifd(ino));
    int fd = open(path, fi->flags & ~O_NOFOLLOW);
    if (fd == -1) {
        fuse_reply_err(req, errno);
    } else {
        fi->fh = (uint64_t)fd;
        fi->keep_cache = 0; /* the page cache of the file is dropped: reads reach us */
        fuse_reply_open(req, fi);
    }
    end(t);
}

static void sf_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    uint64_t t = begin(OP_CREATE);
    int fd = openat(ifd(parent), name, (fi->flags | O_CREAT) & ~O_NOFOLLOW, mode);
    int err = fd == -1 ? errno : 0;
    struct fuse_entry_param e;
    if (!err)
        err = do_lookup(parent, name, &e);
    if (err) {
        if (fd != -1)
            close(fd);
        fuse_reply_err(req, err);
    } else {
        fi->fh = (uint64_t)fd;
        fuse_reply_create(req, &e, fi);
    }
    end(t);
}

static void sf_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)ino;
    uint64_t t = begin(OP_READ);
    struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
    buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    buf.buf[0].fd = (int)fi->fh;
    buf.buf[0].pos = off;
    fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
    end(t);
}

static void sf_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
                         struct fuse_file_info *fi)
{
    (void)ino;
    uint64_t t = begin(OP_WRITE);
    struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
    out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    out.buf[0].fd = (int)fi->fh;
    out.buf[0].pos = off;
    ssize_t res = fuse_buf_copy(&out, in, 0);
    if (res < 0)
        fuse_reply_err(req, (int)-res);
    else
        fuse_reply_write(req, (size_t)res);
    end(t);
}

static void sf_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    uint64_t t = begin(OP_FLUSH);
    /* close() of a duplicate: what the caller's close() would have done to a local file. */
    int res = close(dup((int)fi->fh));
    fuse_reply_err(req, res == -1 ? errno : 0);
    end(t);
}

static void sf_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    uint64_t t = begin(OP_RELEASE);
    close((int)fi->fh);
    fuse_reply_err(req, 0);
    end(t);
}

static void sf_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)ino;
    uint64_t t = begin(OP_FSYNC);
    int res = datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh);
    fuse_reply_err(req, res == -1 ? errno : 0);
    end(t);
}

struct dir_handle {
    DIR *dp;
    off_t offset;
    struct dirent *entry; /* read but not yet sent (it did not fit the last reply) */
};

static void sf_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    uint64_t t = begin(OP_OPENDIR);
    struct dir_handle *d = calloc(1, sizeof *d);
    int fd = d ? openat(ifd(ino), ".", O_RDONLY | O_DIRECTORY) : -1;
    if (d && fd != -1)
        d->dp = fdopendir(fd);
    if (!d || !d->dp) {
        int err = d ? errno : ENOMEM;
        if (fd != -1)
            close(fd);
        free(d);
        fuse_reply_err(req, err);
    } else {
        fi->fh = (uintptr_t)d;
        fuse_reply_open(req, fi);
    }
    end(t);
}

static void sf_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)ino;
    uint64_t t = begin(OP_READDIR);
    struct dir_handle *d = (struct dir_handle *)(uintptr_t)fi->fh;
    char *buf = calloc(1, size);
    size_t used = 0;
    int err = 0;
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        end(t);
        return;
    }
    if (off != d->offset) {
        seekdir(d->dp, off);
        d->entry = NULL;
        d->offset = off;
    }
    for (;;) {
        if (!d->entry) {
            errno = 0;
            d->entry = readdir(d->dp);
            if (!d->entry) {
                err = errno;
                break;
            }
        }
        struct stat st = {.st_ino = d->entry->d_ino, .st_mode = (mode_t)d->entry->d_type << 12};
        size_t need = fuse_add_direntry(req, buf + used, size - used, d->entry->d_name, &st,
                                        d->entry->d_off);
        if (need > size - used)
            break; /* keep d->entry for the next call */
        used += need;
        d->offset = d->entry->d_off;
        d->entry = NULL;
    }
    if (err && used == 0)
        fuse_reply_err(req, err);
    else
        fuse_reply_buf(req, buf, used);
    free(buf);
    end(t);
}

static void sf_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    uint64_t t = begin(OP_RELEASEDIR);
    struct dir_handle *d = (struct dir_handle *)(uintptr_t)fi->fh;
    closedir(d->dp);
    free(d);
    fuse_reply_err(req, 0);
    end(t);
}

static void sf_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)ino;
    uint64_t t = begin(OP_FSYNCDIR);
    int fd = dirfd(((struct dir_handle *)(uintptr_t)fi->fh)->dp);
    int res = datasync ? fdatasync(fd) : fsync(fd);
    fuse_reply_err(req, res == -1 ? errno : 0);
    end(t);
}

static void sf_statfs(fuse_req_t req, fuse_ino_t ino)
{
    uint64_t t = begin(OP_STATFS);
    struct statvfs sv;
    if (fstatvfs(ifd(ino), &sv) == -1)
        fuse_reply_err(req, errno);
    else
        fuse_reply_statfs(req, &sv);
    end(t);
}

static void sf_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t length,
                         struct fuse_file_info *fi)
{
    (void)ino;
    uint64_t t = begin(OP_FALLOCATE);
    int res = fallocate((int)fi->fh, mode, off, length);
    fuse_reply_err(req, res == -1 ? errno : 0);
    end(t);
}

/* A server-side copy (NFS 4.2 COPY, SMB copy-chunk): one round trip, no data through the client. */
static void sf_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
                               struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
                               struct fuse_file_info *fi_out, size_t len, int flags)
{
    (void)ino_in;
    (void)ino_out;
    uint64_t t = begin(OP_COPY_FILE_RANGE);
    ssize_t res = copy_file_range((int)fi_in->fh, &off_in, (int)fi_out->fh, &off_out, len,
                                  (unsigned)flags);
    if (res < 0)
        fuse_reply_err(req, errno);
    else
        fuse_reply_write(req, (size_t)res);
    end(t);
}

static const struct fuse_lowlevel_ops ops = {
    .init = sf_init,
    .lookup = sf_lookup,
    .forget = sf_forget,
    .forget_multi = sf_forget_multi,
    .getattr = sf_getattr,
    .setattr = sf_setattr,
    .readlink = sf_readlink,
    .mknod = sf_mknod,
    .mkdir = sf_mkdir,
    .symlink = sf_symlink,
    .link = sf_link,
    .unlink = sf_unlink,
    .rmdir = sf_rmdir,
    .rename = sf_rename,
    .open = sf_open,
    .create = sf_create,
    .read = sf_read,
    .write_buf = sf_write_buf,
    .flush = sf_flush,
    .release = sf_release,
    .fsync = sf_fsync,
    .opendir = sf_opendir,
    .readdir = sf_readdir,
    .releasedir = sf_releasedir,
    .fsyncdir = sf_fsyncdir,
    .statfs = sf_statfs,
    .fallocate = sf_fallocate,
    .copy_file_range = sf_copy_file_range,
};

/* ---------------------------------------------------------------------------------------------
 * Command line and main loop */

static int usage(const char *argv0, int code)
{
    fprintf(code ? stderr : stdout,
            "usage: %s [--delay-ms MS] [--threads N] [--cache-s S] [--stats FILE] [--debug] BACKING MOUNTPOINT\n"
            "  --delay-ms MS  sleep this long in every request (default 1; 0: a plain pass-through)\n"
            "  --threads N    at most N requests served at once (default 256)\n"
            "  --cache-s S    names and attributes stay valid S seconds (default 0: nothing cached)\n"
            "  --stats FILE   write per-request counters as JSON: SIGUSR1 writes, SIGUSR2 resets\n"
            "                 and writes, unmount writes a last time\n"
            "  --debug        libfuse's request log on stderr\n",
            argv0);
    return code;
}

int main(int argc, char *argv[])
{
    double delay_ms = 1.0;
    long threads = 256;
    int debug = 0;
    const char *backing = NULL, *mountpoint = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char *rest = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return usage(argv[0], 0);
        if (!strcmp(a, "--debug")) {
            debug = 1;
        } else if (!strcmp(a, "--delay-ms") && i + 1 < argc) {
            delay_ms = strtod(argv[++i], &rest);
            if (*rest || delay_ms < 0 || delay_ms > 60000) {
                fprintf(stderr, "slowfs: --delay-ms wants a number of milliseconds, 0-60000\n");
                return 2;
            }
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            threads = strtol(argv[++i], &rest, 10);
            if (*rest || threads < 1 || threads > 100000) {
                fprintf(stderr, "slowfs: --threads wants a whole number, 1-100000\n");
                return 2;
            }
        } else if (!strcmp(a, "--cache-s") && i + 1 < argc) {
            cache_s = strtod(argv[++i], &rest);
            if (*rest || cache_s < 0 || cache_s > 86400) {
                fprintf(stderr, "slowfs: --cache-s wants a number of seconds, 0-86400\n");
                return 2;
            }
        } else if (!strcmp(a, "--stats") && i + 1 < argc) {
            stats_path = argv[++i];
        } else if (a[0] == '-') {
            fprintf(stderr, "slowfs: unknown option %s\n", a);
            return usage(argv[0], 2);
        } else if (!backing) {
            backing = a;
        } else if (!mountpoint) {
            mountpoint = a;
        } else {
            return usage(argv[0], 2);
        }
    }
    if (!backing || !mountpoint)
        return usage(argv[0], 2);
    uint64_t delay_ns = (uint64_t)(delay_ms * 1e6 + 0.5);
    delay_ts.tv_sec = (time_t)(delay_ns / 1000000000u);
    delay_ts.tv_nsec = (long)(delay_ns % 1000000000u);

    /* The kernel already applied the caller's umask to every mode it sends. */
    umask(0);
    /* Sleeps of 0.2 ms must not be stretched by the default 50 us timer slack. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    /* One O_PATH descriptor per inode the kernel holds: allow many. */
    struct rlimit rl = {1 << 20, 1 << 20};
    if (setrlimit(RLIMIT_NOFILE, &rl) == -1 && getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    root_inode.fd = open(backing, O_PATH | O_DIRECTORY);
    if (root_inode.fd == -1) {
        fprintf(stderr, "slowfs: cannot open backing directory %s: %s\n", backing, strerror(errno));
        return 1;
    }
    root_inode.nlookup = 2;

    /* Block the counter signals before libfuse starts threads, so only stats_thread takes them. */
    static sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    pthread_t tid;
    pthread_create(&tid, NULL, stats_thread, &set);

    char *fuse_argv[] = {argv[0], "-o",
                         "allow_other,default_permissions,fsname=slowfs,subtype=slowfs",
                         debug ? "-d" : NULL, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(debug ? 4 : 3, fuse_argv);
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!se)
        return 1;
    int ret = 1;
    if (fuse_set_signal_handlers(se) == 0) {
        if (fuse_session_mount(se, mountpoint) == 0) {
            write_stats(1); /* a stats file exists (seq 1) as soon as the mount does */
            struct fuse_loop_config *config = fuse_loop_cfg_create();
            fuse_loop_cfg_set_clone_fd(config, 1);
            fuse_loop_cfg_set_max_threads(config, (unsigned)threads);
            /* Idle threads stay: creating one per burst would add latency of its own. */
            fuse_loop_cfg_set_idle_threads(config, (unsigned)threads);
            ret = fuse_session_loop_mt(se, config);
            fuse_loop_cfg_destroy(config);
            write_stats(0);
            fuse_session_unmount(se);
        } else {
            fprintf(stderr, "slowfs: cannot mount on %s\n", mountpoint);
        }
        fuse_remove_signal_handlers(se);
    }
    fuse_session_destroy(se);
    return ret ? 1 : 0;
}
