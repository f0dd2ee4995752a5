/*
 * TCP connect health checks, the whole schedule in C: nodeagent.health.tcp calls tick() from
 * one loop timer. At a thousand checks a second, Python run per check (a callback, a timer
 * slot, the rise/fall bookkeeping) cost more than the connect itself; here Python runs once
 * per slot and once per change of a backend's state.
 *
 * Time is the caller's (the loop's clock, seconds), on a grid of `slot` seconds: a check
 * starts in the slot nearest its due time, and each tick (one per slot while checks are due
 * or in flight) first reaps the checks that ended since the last, then ends those past their
 * deadline, then starts those due. So the process wakes once per slot, however many checks
 * end in it (waking at each connect's end cost more than the connect), a result is seen up
 * to a slot late, and a connect that ends after its deadline but before the tick that
 * follows it counts (a timeout is between `timeout` and `timeout` + slot).
 *
 * Each target has an address, a socket mark (its path), an interval, a timeout and rise/fall.
 * A check takes a socket (a spare one, else a new one), sets the mark and connects without
 * blocking. It ends when the epoll set reports the socket (connected, or failed: SO_ERROR),
 * or at its deadline; the socket is then disconnected (connect to AF_UNSPEC: a RST if it
 * connected, no TIME_WAIT, and the socket can connect again) and kept for the next check, up
 * to SPARE. The next check starts at max(started + interval, now). Three system calls a
 * check (mark, connect, disconnect), and one epoll_wait a tick.
 *
 * A socket is registered once, edge-triggered, by its descriptor, so a check needs no
 * epoll_ctl. A disconnect also reports the socket, later: the kernel reports a socket's
 * state as it is when read, never as it was, so an event for a socket whose owner (by
 * descriptor) is no check in flight is skipped, and one for a socket re-used by a new check
 * is that check's state (a connect in progress is not reported at all).
 *
 * Targets checked by the caller (HTTP, HTTPS: add_reported) hand their results to report(),
 * so rise and fall are applied here for every kind of check; tick() never starts theirs.
 *
 * Nothing here blocks: every system call is on a non-blocking socket, and epoll_wait is
 * called with a zero timeout.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* Spare sockets kept: enough for the checks in flight at once at thousands a second; a burst
 * of timeouts opens more, closed again as they end. */
#define SPARE 256
#define MAX_EVENTS 256
/* The path index is the mark's lower 16 bits (nodeagent.dataplane.hcpath.MAX_PATHS). */
#define MAX_TARGETS (1U << 16)
#define WATCHED (EPOLLOUT | EPOLLET)
#define NO_OWNER UINT32_MAX

/* REPORTED: a result reported by the caller (report()), with its reason text. */
enum outcome { PASSED, CONNECT_ERROR, TIMEOUT, SOCKET_ERROR, REPORTED };

typedef struct {
    struct sockaddr_in addr;
    double interval, timeout;
    double due;                /* idle: when the next check starts */
    double started, deadline;  /* in flight */
    uint32_t mark, rise, fall;
    uint32_t streak;           /* consecutive results against the current state */
    int fd;                    /* in flight: its socket; else -1 */
    int err;                   /* the last failure's errno (CONNECT_ERROR, SOCKET_ERROR) */
    PyObject *text;            /* the last failure's reason (REPORTED): owned, or NULL */
    uint8_t kind;              /* the last failure (enum outcome); PASSED: none yet */
    uint8_t used, failing;
    uint8_t reported;          /* checked by the caller (HTTP, HTTPS): never started here */
} target_t;

typedef struct {
    PyObject_HEAD
    int epfd;                  /* -1 once closed */
    uint32_t *owner;           /* by socket descriptor: the target whose check holds it */
    int nowner;
    target_t *targets;         /* by handle; slots below `high` may be used */
    uint32_t high, cap, max;
    uint32_t *free;            /* handles free below `high` */
    uint32_t nfree;
    int spare[SPARE];          /* disconnected sockets, registered in the set */
    int nspare;
    uint32_t in_flight;
    double slot;
    unsigned long long completed;
    PyObject *changes;         /* the call's state changes, made on the first */
} Checks;

static const struct sockaddr unspec = {.sa_family = AF_UNSPEC};

static int disconnect(int fd) { return connect(fd, &unspec, sizeof(unspec)) == 0; }

static double grid(const Checks *c, double t) { return nearbyint(t / c->slot) * c->slot; }

static int closed(const Checks *c)
{
    if (c->epfd >= 0)
        return 0;
    PyErr_SetString(PyExc_ValueError, "TcpChecks is closed");
    return 1;
}

/* Keep fd for a later check (disconnected: a RST if it connected), or close it. */
static void release(Checks *c, int fd)
{
    c->owner[fd] = NO_OWNER;
    if (disconnect(fd) && c->nspare < SPARE)
        c->spare[c->nspare++] = fd;
    else
        close(fd);
}

static PyObject *reason(const target_t *t)
{
    int err = t->err;
    switch (t->kind) {
    case REPORTED:
        return Py_NewRef(t->text);
    case TIMEOUT:
        return PyUnicode_FromString("timeout");
    case SOCKET_ERROR:
        return PyUnicode_FromFormat("socket: %s", strerror(err));
    default:
        return PyUnicode_FromString(err == ECONNREFUSED ? "refused" : strerror(err));
    }
}

/* Note a change for the caller: (handle, failing, reason). */
static int emit(Checks *c, uint32_t h)
{
    const target_t *t = &c->targets[h];
    if (!c->changes && !(c->changes = PyList_New(0)))
        return -1;
    PyObject *why = reason(t);
    if (!why)
        return -1;
    PyObject *item = Py_BuildValue("(IOO)", h, t->failing ? Py_True : Py_False, why);
    Py_DECREF(why);
    if (!item)
        return -1;
    int rc = PyList_Append(c->changes, item);
    Py_DECREF(item);
    return rc;
}

/* A check's result, into the rise/fall state: the one place rise and fall are applied, for
 * the checks run here and those reported (text: a REPORTED failure's reason, borrowed). A
 * change is emitted when the state flips, and while failing when the reason differs from the
 * last one (the report shows the latest). */
static int record(Checks *c, uint32_t h, uint8_t kind, int err, PyObject *text)
{
    target_t *t = &c->targets[h];
    int failed = kind != PASSED, new_reason = 0;
    if (failed) {
        if (kind == REPORTED) {
            int same = t->kind == REPORTED ? PyUnicode_Compare(t->text, text) : 1;
            if (same == -1 && PyErr_Occurred())
                return -1;
            new_reason = same != 0;
        } else {
            new_reason = kind != t->kind || err != t->err;
        }
        t->kind = kind;
        t->err = err;
        Py_XSETREF(t->text, Py_XNewRef(text));
    }
    if (failed == t->failing) {
        t->streak = 0;
        return failed && new_reason ? emit(c, h) : 0;
    }
    if (++t->streak < (t->failing ? t->rise : t->fall))
        return 0;
    t->failing = !t->failing;
    t->streak = 0;
    return emit(c, h);
}

/* End target h's check in flight (its socket released by the caller) or failed to start. */
static int finish(Checks *c, uint32_t h, double now, uint8_t kind, int err)
{
    target_t *t = &c->targets[h];
    t->fd = -1;
    t->due = fmax(t->started + t->interval, now);
    c->completed++;
    return record(c, h, kind, err, NULL);
}

/* A new socket, in the set; -1 with errno if none. */
static int new_socket(Checks *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), err;
    if (fd < 0)
        return -1;
    if (fd >= c->nowner) {
        int n = fd * 2 + 64;
        uint32_t *owner = PyMem_Realloc(c->owner, (size_t)n * sizeof(*owner));
        if (!owner) {
            close(fd);
            errno = ENOMEM;
            return -1;
        }
        for (int i = c->nowner; i < n; i++)
            owner[i] = NO_OWNER;
        c->owner = owner;
        c->nowner = n;
    }
    struct epoll_event ev = {.events = WATCHED, .data.fd = fd};
    if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

static int start(Checks *c, uint32_t h, double now)
{
    target_t *t = &c->targets[h];
    int fd = c->nspare ? c->spare[--c->nspare] : new_socket(c), err;
    t->started = now;
    t->deadline = now + t->timeout;
    if (fd < 0)
        return finish(c, h, now, SOCKET_ERROR, errno);
    if (setsockopt(fd, SOL_SOCKET, SO_MARK, &t->mark, sizeof(t->mark)) < 0) {
        err = errno;
        release(c, fd);
        return finish(c, h, now, SOCKET_ERROR, err);
    }
    if (connect(fd, (const struct sockaddr *)&t->addr, sizeof(t->addr)) == 0) {
        release(c, fd);
        return finish(c, h, now, PASSED, 0);
    }
    if (errno != EINPROGRESS) {
        err = errno;
        release(c, fd);
        return finish(c, h, now, CONNECT_ERROR, err);
    }
    c->owner[fd] = h;
    t->fd = fd;
    c->in_flight++;
    return 0;
}

/* End the check of target h in flight, its socket reported or late. */
static int end_check(Checks *c, uint32_t h, double now, uint8_t kind, int err)
{
    release(c, c->targets[h].fd);
    c->in_flight--;
    return finish(c, h, now, kind, err);
}

/* (wake, changes): the time to call tick() next (inf: nothing to do) and the state changes. */
static PyObject *result(Checks *c, double wake, int failed)
{
    PyObject *changes = c->changes;
    c->changes = NULL;
    if (failed) {
        Py_XDECREF(changes);
        return NULL;
    }
    if (!changes)
        return Py_BuildValue("(d())", wake);
    return Py_BuildValue("(dN)", wake, changes);
}

static double now_arg(PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NAN;
    return now;
}

/* End the checks whose sockets the set reports. */
static int reap(Checks *c, double now)
{
    struct epoll_event evs[MAX_EVENTS];
    int n, failed = 0;
    do {
        n = epoll_wait(c->epfd, evs, MAX_EVENTS, 0);
        if (n < 0 && errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            uint32_t h = c->owner[fd];
            if (h == NO_OWNER)
                continue;  /* a spare socket, reported for its disconnect */
            int err = 0;
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                socklen_t len = sizeof(err);
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || !err)
                    err = ECONNRESET;
            }
            failed |= end_check(c, h, now, err ? CONNECT_ERROR : PASSED, err) < 0;
        }
    } while (n == MAX_EVENTS || n < 0);
    return failed ? -1 : 0;
}

PyDoc_STRVAR(tick_doc, "tick(now) -> (wake, changes): end the checks that ended or are late, "
                       "start those due; call again at wake (inf: nothing to do).");

static PyObject *checks_tick(Checks *c, PyObject *arg)
{
    double now = now_arg(arg), wake = INFINITY;
    if (isnan(now) || closed(c))
        return NULL;
    int failed = reap(c, now) < 0;
    for (uint32_t h = 0; h < c->high; h++) {
        target_t *t = &c->targets[h];
        if (!t->used || t->reported)
            continue;
        if (t->fd >= 0 && t->deadline <= now)
            failed |= end_check(c, h, now, TIMEOUT, 0) < 0;
        /* (a microsecond's slack: the loop may run a timer that much early) */
        if (t->fd < 0 && grid(c, t->due) <= now + 1e-6)
            failed |= start(c, h, now) < 0;
        if (t->fd < 0)
            wake = fmin(wake, grid(c, t->due));
    }
    if (c->in_flight)  /* reaped at the next slot */
        wake = fmin(wake, (floor(now / c->slot + 1e-6) + 1) * c->slot);
    return result(c, wake, failed);
}

/* A free handle (its target to be filled in), or -1 with an exception set. */
static long new_handle(Checks *c)
{
    if (c->nfree)
        return c->free[--c->nfree];
    if (c->high == c->max) {
        PyErr_Format(PyExc_ValueError, "add: more than %u targets", c->max);
        return -1;
    }
    if (c->high == c->cap) {
        uint32_t cap = c->cap ? c->cap * 2 : 64;
        cap = cap > c->max ? c->max : cap;
        target_t *targets = PyMem_Realloc(c->targets, cap * sizeof(*targets));
        if (!targets) {
            PyErr_NoMemory();
            return -1;
        }
        c->targets = targets;
        uint32_t *free = PyMem_Realloc(c->free, cap * sizeof(*free));
        if (!free) {
            PyErr_NoMemory();
            return -1;
        }
        c->free = free;
        c->cap = cap;
    }
    return c->high++;
}

PyDoc_STRVAR(add_doc, "add(address, port, mark, interval, timeout, rise, fall, first) -> handle: "
                      "check an IPv4 address:port, the first check at time first.");

static PyObject *checks_add(Checks *c, PyObject *args)
{
    const char *address;
    unsigned int port, mark, rise, fall;
    double interval, timeout, first;
    struct in_addr ip;
    if (!PyArg_ParseTuple(args, "sIIddIId:add", &address, &port, &mark, &interval, &timeout,
                          &rise, &fall, &first) ||
        closed(c))
        return NULL;
    if (inet_pton(AF_INET, address, &ip) != 1 || port == 0 || port > 65535 ||
        !(interval > 0) || !(timeout > 0) || !isfinite(first) || rise == 0 || fall == 0) {
        PyErr_SetString(PyExc_ValueError, "add: a bad address, port, time or count");
        return NULL;
    }
    long h = new_handle(c);
    if (h < 0)
        return NULL;
    target_t *t = &c->targets[h];
    *t = (target_t){
        .addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = ip},
        .interval = interval,
        .timeout = timeout,
        .due = first,
        .mark = mark,
        .rise = rise,
        .fall = fall,
        .fd = -1,
        .used = 1,
    };
    return PyLong_FromLong(h);
}

PyDoc_STRVAR(add_reported_doc, "add_reported(rise, fall) -> handle: a target checked by the "
                               "caller (HTTP, HTTPS), its results given to report().");

static PyObject *checks_add_reported(Checks *c, PyObject *args)
{
    unsigned int rise, fall;
    if (!PyArg_ParseTuple(args, "II:add_reported", &rise, &fall) || closed(c))
        return NULL;
    if (rise == 0 || fall == 0) {
        PyErr_SetString(PyExc_ValueError, "add_reported: rise and fall must be at least 1");
        return NULL;
    }
    long h = new_handle(c);
    if (h < 0)
        return NULL;
    c->targets[h] = (target_t){.rise = rise, .fall = fall, .fd = -1, .used = 1, .reported = 1};
    return PyLong_FromLong(h);
}

PyDoc_STRVAR(report_doc, "report(handle, reason) -> changes: a result of a target added with "
                         "add_reported (reason None: passed), into its rise/fall state.");

static PyObject *checks_report(Checks *c, PyObject *args)
{
    unsigned long h;
    PyObject *why;
    if (!PyArg_ParseTuple(args, "kO:report", &h, &why) || closed(c))
        return NULL;
    if (h >= c->high || !c->targets[h].used || !c->targets[h].reported) {
        PyErr_Format(PyExc_KeyError, "no reported target %lu", h);
        return NULL;
    }
    if (why != Py_None && !PyUnicode_Check(why)) {
        PyErr_SetString(PyExc_TypeError, "report: the reason is a str or None");
        return NULL;
    }
    c->completed++;
    int failed = why == Py_None ? record(c, (uint32_t)h, PASSED, 0, NULL)
                                : record(c, (uint32_t)h, REPORTED, 0, why);
    PyObject *out = result(c, 0, failed < 0);
    if (!out)
        return NULL;
    PyObject *changes = Py_NewRef(PyTuple_GET_ITEM(out, 1));
    Py_DECREF(out);
    return changes;
}

PyDoc_STRVAR(remove_doc, "remove(handle): stop checking; a check in flight never reports.");

static PyObject *remove_target(Checks *c, PyObject *arg)
{
    unsigned long h = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred() || closed(c))
        return NULL;
    if (h >= c->high || !c->targets[h].used) {
        PyErr_Format(PyExc_KeyError, "no target %lu", h);
        return NULL;
    }
    target_t *t = &c->targets[h];
    if (t->fd >= 0) {
        release(c, t->fd);
        c->in_flight--;
        t->fd = -1;
    }
    t->used = 0;
    Py_CLEAR(t->text);
    c->free[c->nfree++] = (uint32_t)h;
    Py_RETURN_NONE;
}

static void close_all(Checks *c)
{
    if (c->epfd < 0)
        return;
    for (uint32_t h = 0; h < c->high; h++) {
        if (c->targets[h].used && c->targets[h].fd >= 0) {
            disconnect(c->targets[h].fd);
            close(c->targets[h].fd);
        }
        Py_CLEAR(c->targets[h].text);
    }
    while (c->nspare)
        close(c->spare[--c->nspare]);
    close(c->epfd);
    c->epfd = -1;
    PyMem_Free(c->targets);
    PyMem_Free(c->free);
    PyMem_Free(c->owner);
    c->targets = NULL;
    c->free = NULL;
    c->owner = NULL;
    c->nowner = 0;
    c->high = c->cap = c->nfree = c->in_flight = 0;
}

PyDoc_STRVAR(close_doc, "close(): end every check (a RST for those connected) and release "
                        "every descriptor; idempotent.");

static PyObject *close_checks(Checks *c, PyObject *unused)
{
    (void)unused;
    close_all(c);
    Py_RETURN_NONE;
}

static PyObject *get_completed(Checks *c, void *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLongLong(c->completed);
}

static PyObject *get_in_flight(Checks *c, void *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLong(c->in_flight);
}

static PyObject *get_spare(Checks *c, void *unused)
{
    (void)unused;
    return PyLong_FromLong(c->nspare);
}

static PyObject *checks_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"slot", "max_targets", NULL};
    double slot = 0.02;
    unsigned int max = MAX_TARGETS;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|dI:TcpChecks", kwlist, &slot, &max))
        return NULL;
    if (!(slot > 0) || max == 0 || max > MAX_TARGETS) {
        PyErr_Format(PyExc_ValueError, "TcpChecks: slot > 0 and max_targets in 1..%u",
                     MAX_TARGETS);
        return NULL;
    }
    Checks *c = (Checks *)type->tp_alloc(type, 0);
    if (!c)
        return NULL;
    c->slot = slot;
    c->max = max;
    c->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (c->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

static void checks_dealloc(Checks *c)
{
    close_all(c);
    Py_XDECREF(c->changes);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMethodDef checks_methods[] = {
    {"add", (PyCFunction)checks_add, METH_VARARGS, add_doc},
    {"add_reported", (PyCFunction)checks_add_reported, METH_VARARGS, add_reported_doc},
    {"report", (PyCFunction)checks_report, METH_VARARGS, report_doc},
    {"remove", (PyCFunction)remove_target, METH_O, remove_doc},
    {"tick", (PyCFunction)checks_tick, METH_O, tick_doc},
    {"close", (PyCFunction)close_checks, METH_NOARGS, close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef checks_getset[] = {
    {"completed", (getter)get_completed, NULL, "checks ended so far", NULL},
    {"in_flight", (getter)get_in_flight, NULL, "checks in flight (each holds a socket)", NULL},
    {"spare", (getter)get_spare, NULL, "sockets kept for later checks", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject checks_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "weir.nodeagent.health._tcpcheck.TcpChecks",
    .tp_basicsize = sizeof(Checks),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TcpChecks(slot=0.02, max_targets=65536): TCP connect checks and their "
              "rise/fall state, driven by tick().",
    .tp_new = checks_new,
    .tp_dealloc = (destructor)checks_dealloc,
    .tp_methods = checks_methods,
    .tp_getset = checks_getset,
};

PyDoc_STRVAR(disconnect_doc, "disconnect(fd) -> bool: connect fd to AF_UNSPEC (a RST if it "
                             "was connected; the socket can connect again).");

static PyObject *py_disconnect(PyObject *self, PyObject *arg)
{
    (void)self;
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0)
        return NULL;
    return PyBool_FromLong(disconnect(fd));
}

static PyMethodDef methods[] = {
    {"disconnect", py_disconnect, METH_O, disconnect_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_tcpcheck",
    .m_doc = "TCP connect health checks; use nodeagent.health.tcp.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__tcpcheck(void)
{
    if (PyType_Ready(&checks_type) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (!mod)
        return NULL;
    if (PyModule_AddObjectRef(mod, "TcpChecks", (PyObject *)&checks_type) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
