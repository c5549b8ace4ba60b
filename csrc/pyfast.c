/* SPDX-License-Identifier: Apache-2.0 */
/* pyfast.c -- shmq._fast, a small hand-written CPython extension for the
 * hot calls of shmq.Queue (put, get, put_many, get_many), beside the cffi
 * module shmq._core, which keeps everything else.
 *
 * Why: through cffi a call releases and retakes the GIL and converts every
 * argument, and a get copies the message twice (into a scratch buffer, then
 * into bytes). Here a call tries the operation once while it holds the GIL
 * (no wait: a few hundred nanoseconds of work) and releases the GIL only to
 * wait; get builds its bytes object straight from the slot (one copy, via
 * shmq_take); get_many builds its list in C; put_many takes a list of bytes
 * as it is, with no lengths array made in Python.
 *
 * It is in the operations layer and calls only the core's public entry
 * points (shmq_api.h), through the addresses the cffi module hands over at
 * import (shmq/channel/queue.py: bind()): one copy of the core per process.
 *
 * put and get are Queue.put and Queue.get themselves (bound on each handle
 * by shmq/channel/queue.py): what they do not finish they hand to the
 * queue's _put_rest / _get_rest, through a weak reference (this module
 * adds no reference cycle). The other calls return little on purpose: the
 * list on the common path, else an int the Python caller deals with as
 * before -- a negative shmq_status (time-outs, signals, errors: shmq/channel/queue.py
 * has the budget, the messages and the exceptions), SHMQ_FAST_CLOSED, or
 * SHMQ_FAST_DECLINED (the arguments or the moment are not for this path:
 * the Python path does the same work). A wait is never longer than the
 * caller's slice, so signal handlers run as they do without this module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shmq_api.h"

enum {
    SHMQ_FAST_CLOSED = 1,   /* the handle was closed: the caller raises QueueClosed */
    SHMQ_FAST_DECLINED = 2, /* not for this path: the caller takes the Python path */
};

/* The core's entry points, from shmq._core (bind()). */
static struct {
    int (*push)(shmq_handle *, int, uint8_t, uint8_t, const char *, uint32_t, const char *, uint32_t, int64_t);
    int (*push_many)(shmq_handle *, int, const char *, const uint32_t *, const char *, uint8_t, uint32_t, int64_t,
                     uint32_t *);
    int64_t (*take)(shmq_handle *, shmq_alloc_fn, void *, shmq_message *);
    int (*pop)(shmq_handle *, char *, uint32_t, int64_t, shmq_message *);
    int (*pop_many)(shmq_handle *, char *, uint32_t, uint32_t, int64_t, uint32_t *, uint8_t *, uint32_t *,
                    shmq_message *);
    int (*pop_finish)(shmq_handle *, const shmq_message *, char *);
    void (*pop_abandon)(shmq_handle *, const shmq_message *);
} core;

/* A blocked call returns to the interpreter at least this often (as
 * shmq/_calls.py's _SLICE_NS), so that signal handlers run. */
#define SLICE_NS 100000000LL
#define TIMEOUT_MAX_S (10 * 365 * 86400.0)
#define MAX_BATCH 4096

typedef struct {
    PyObject_HEAD
    shmq_handle *h;          /* NULL once closed */
    int wait_unheld;         /* durability sync/interval: a call may wait for a flush; never under the GIL */
    uint32_t inline_max;     /* larger messages take the Python path */
    uint32_t scratch_bytes;
    int scratch_busy;        /* a call of another thread is using the buffers (it released the GIL) */
    char *scratch;
    uint32_t lengths[MAX_BATCH];
    uint8_t tags[MAX_BATCH];
    int last_errno;          /* errno after a failed call (SHMQ_ESYS, SHMQ_ELOG) */
    PyObject *owner;         /* a weak reference to the shmq.Queue: its _put_rest, _get_rest go on */
} Channel;

static PyObject *str_put_rest, *str_get_rest, *str_put_keywords, *str_block, *str_timeout;

/* --------------------------------------------------------------- arguments */

/* The wait of a put/get: 0 (block false), -1 (None: no limit), or a float or
 * int of seconds in range as nanoseconds; -2 when the Python path must check
 * it (and raise). Mirrors shmq/_args.py timeout_ns. */
static int64_t timeout_arg(PyObject *block, PyObject *timeout)
{
    if (block == Py_False)
        return 0;
    if (block != Py_True) {
        int yes = PyObject_IsTrue(block);
        if (yes < 0) {
            PyErr_Clear();
            return -2;
        }
        if (!yes)
            return 0;
    }
    if (timeout == NULL || timeout == Py_None)
        return -1;
    double seconds;
    if (PyFloat_CheckExact(timeout))
        seconds = PyFloat_AS_DOUBLE(timeout);
    else if (PyLong_CheckExact(timeout)) {
        seconds = PyLong_AsDouble(timeout);
        if (seconds == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return -2;
        }
    } else
        return -2;
    if (!(seconds >= 0.0 && seconds <= TIMEOUT_MAX_S)) /* NaN fails too */
        return -2;
    return (int64_t)nearbyint(seconds * 1e9); /* round half to even, as Python's round() */
}

static int64_t first_wait(int64_t total_ns)
{
    return total_ns < 0 || total_ns > SLICE_NS ? SLICE_NS : total_ns;
}

static PyObject *status(int rc)
{
    return PyLong_FromLong(rc);
}

static char *scratch_take(Channel *self)
{
    if (self->scratch_busy)
        return NULL;
    if (!self->scratch) {
        self->scratch = PyMem_RawMalloc(self->scratch_bytes);
        if (!self->scratch)
            return NULL;
    }
    self->scratch_busy = 1;
    return self->scratch;
}

/* --------------------------------------------------------------- put */

/* One message from `data`: tried once under the GIL without waiting; if it
 * must wait (no room, throttled), again with the GIL released for up to
 * wait_ns. Durability sync/interval waits for a flush even at wait 0: the
 * whole call then runs without the GIL. */
static int put_bytes(Channel *self, const char *data, uint32_t length, uint8_t tag, int64_t wait_ns)
{
    shmq_handle *h = self->h;
    int rc;
    if (!self->wait_unheld) {
        rc = core.push(h, -1, tag, 0, data, length, NULL, 0, 0);
        if (rc != SHMQ_EFULL || wait_ns == 0)
            goto out;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = core.push(h, -1, tag, 0, data, length, NULL, 0, wait_ns);
    Py_END_ALLOW_THREADS
out:
    if (rc == SHMQ_ESYS || rc == SHMQ_ELOG)
        self->last_errno = errno;
    return rc;
}

/* (block, timeout) of put(obj, block, timeout) / get(block, timeout), from
 * positional arguments after the first `skip` and keywords; 0, or -1 with
 * TypeError as Python's own signature would raise it. */
static int block_timeout(const char *what, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                         Py_ssize_t skip, PyObject **block, PyObject **timeout)
{
    *block = Py_True;
    *timeout = Py_None;
    if (nargs > skip + 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd positional arguments (%zd given)", what, skip + 2,
                     nargs);
        return -1;
    }
    if (nargs > skip)
        *block = args[skip];
    if (nargs > skip + 1)
        *timeout = args[skip + 1];
    Py_ssize_t keywords = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < keywords; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        PyObject **slot;
        Py_ssize_t position;
        if (name == str_block || PyUnicode_Compare(name, str_block) == 0) {
            slot = block;
            position = skip;
        } else if (name == str_timeout || PyUnicode_Compare(name, str_timeout) == 0) {
            slot = timeout;
            position = skip + 1;
        } else {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", what, name);
            return -1;
        }
        if (nargs > position) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%U'", what, name);
            return -1;
        }
        *slot = args[nargs + i];
    }
    return 0;
}

/* Hands what this path did not finish to the queue's Python code:
 * queue.<method>(result, *rest) -- the time budget, the codec, the errors. */
static PyObject *go_on(Channel *self, PyObject *method, PyObject *result, PyObject *a, PyObject *b, PyObject *c)
{
    if (!result)
        return NULL;
    PyObject *queue = PyWeakref_GetObject(self->owner); /* borrowed */
    if (!queue || queue == Py_None) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_ReferenceError, "shmq._fast.Channel: its queue is gone");
        return NULL;
    }
    Py_INCREF(queue);
    PyObject *call[5] = {queue, result, a, b, c};
    PyObject *out = PyObject_VectorcallMethod(method, call, (c ? 5 : 4) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(queue);
    Py_DECREF(result);
    return out;
}

/* put(obj, block=True, timeout=None): Queue.put itself. bytes (tag 0) go
 * in here; anything else, and whatever this path does not finish, goes on in
 * Queue._put_rest(status, obj, block, timeout). */
static PyObject *Channel_put(Channel *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *block, *timeout;
    if (nargs < 1) { /* put(obj=...): Queue._put_keywords takes it as Python's signature would */
        PyObject *queue = PyWeakref_GetObject(self->owner);
        if (!queue || queue == Py_None) {
            PyErr_SetString(PyExc_ReferenceError, "shmq._fast.Channel: its queue is gone");
            return NULL;
        }
        PyObject *call[4] = {NULL, NULL, NULL, NULL};
        Py_ssize_t keywords = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        if (keywords > 3) {
            PyErr_SetString(PyExc_TypeError, "put() takes at most 3 arguments");
            return NULL;
        }
        call[0] = queue;
        for (Py_ssize_t i = 0; i < keywords; i++)
            call[1 + i] = args[i];
        Py_INCREF(queue);
        PyObject *out = PyObject_VectorcallMethod(str_put_keywords, call, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
        Py_DECREF(queue);
        return out;
    }
    if (block_timeout("put", args, nargs, kwnames, 1, &block, &timeout) < 0)
        return NULL;
    PyObject *obj = args[0];
    int rc;
    if (!self->h)
        rc = SHMQ_FAST_CLOSED;
    else if (!PyBytes_CheckExact(obj) || (size_t)PyBytes_GET_SIZE(obj) > self->inline_max)
        rc = SHMQ_FAST_DECLINED;
    else {
        int64_t total_ns = timeout_arg(block, timeout);
        /* The bytes object is immutable and referenced by the caller for the call. */
        rc = total_ns == -2 ? SHMQ_FAST_DECLINED
                            : put_bytes(self, PyBytes_AS_STRING(obj), (uint32_t)PyBytes_GET_SIZE(obj), 0,
                                        first_wait(total_ns));
    }
    if (rc == SHMQ_OK)
        Py_RETURN_NONE;
    return go_on(self, str_put_rest, status(rc), obj, block, timeout);
}

/* put_tagged(tag, data, wait_ns): an encoded message (any buffer), one slice. */
static PyObject *Channel_put_tagged(Channel *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return status(SHMQ_FAST_DECLINED);
    if (!self->h)
        return status(SHMQ_FAST_CLOSED);
    long tag = PyLong_AsLong(args[0]);
    long long wait_ns = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc;
    if (view.len > self->inline_max || tag < 0 || tag > 255)
        rc = SHMQ_FAST_DECLINED;
    else
        rc = put_bytes(self, view.buf, (uint32_t)view.len, (uint8_t)tag, wait_ns);
    PyBuffer_Release(&view);
    return status(rc);
}

/* put_many(items, wait_ns, tags): a list of bytes, each at most
 * inline_max, together at most the scratch buffer, with their tags (bytes
 * of one per item, or None: all 0): (status, how many went in).
 * SHMQ_FAST_DECLINED for anything else (the caller's Python path). */
static PyObject *Channel_put_many(Channel *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_CheckExact(args[0]))
        return status(SHMQ_FAST_DECLINED);
    if (!self->h)
        return status(SHMQ_FAST_CLOSED);
    long long wait_ns = PyLong_AsLongLong(args[1]);
    if (wait_ns == -1 && PyErr_Occurred())
        return NULL;
    PyObject *items = args[0];
    Py_ssize_t count = PyList_GET_SIZE(items);
    if (count == 0 || count > MAX_BATCH)
        return status(SHMQ_FAST_DECLINED);
    PyObject *tag_bytes = args[2];
    const char *tags = NULL;
    if (tag_bytes != Py_None) {
        if (!PyBytes_CheckExact(tag_bytes) || PyBytes_GET_SIZE(tag_bytes) != count)
            return status(SHMQ_FAST_DECLINED);
        tags = PyBytes_AS_STRING(tag_bytes); /* referenced by the caller for the call */
    }
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyBytes_CheckExact(item) || (uint64_t)PyBytes_GET_SIZE(item) > self->inline_max)
            return status(SHMQ_FAST_DECLINED);
        total += (uint64_t)PyBytes_GET_SIZE(item);
    }
    if (total > self->scratch_bytes)
        return status(SHMQ_FAST_DECLINED);
    char *buffer = scratch_take(self);
    if (!buffer)
        return status(SHMQ_FAST_DECLINED);
    /* The list cannot change below: the GIL is held until the copy is done. */
    char *at = buffer;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        uint32_t length = (uint32_t)PyBytes_GET_SIZE(item);
        memcpy(at, PyBytes_AS_STRING(item), length);
        self->lengths[i] = length;
        at += length;
    }
    shmq_handle *h = self->h;
    uint32_t pushed = 0, more = 0;
    int rc = SHMQ_EFULL;
    if (!self->wait_unheld)
        rc = core.push_many(h, -1, buffer, self->lengths, tags, 0, (uint32_t)count, 0, &pushed);
    if ((rc == SHMQ_EFULL && wait_ns != 0) || self->wait_unheld) {
        const char *rest = buffer;
        for (uint32_t i = 0; i < pushed; i++)
            rest += self->lengths[i];
        Py_BEGIN_ALLOW_THREADS
        rc = core.push_many(h, -1, rest, self->lengths + pushed, tags ? tags + pushed : NULL, 0,
                            (uint32_t)count - pushed, wait_ns, &more);
        Py_END_ALLOW_THREADS
        pushed += more;
    }
    if (rc == SHMQ_ESYS || rc == SHMQ_ELOG)
        self->last_errno = errno;
    self->scratch_busy = 0;
    return Py_BuildValue("(iI)", rc, pushed);
}

/* --------------------------------------------------------------- get */

typedef struct {
    PyObject *bytes;   /* the room made last */
    uint32_t limit;    /* larger messages: NULL, no error (finish_claimed makes their room) */
} room;

/* shmq_take's alloc: a bytes object of `length` (not tracked by the garbage
 * collector, so making one runs no Python code while a slot is held). */
static void *alloc_bytes(void *ctx, uint32_t length)
{
    room *r = ctx;
    Py_CLEAR(r->bytes);
    if (length > r->limit)
        return NULL;
    r->bytes = PyBytes_FromStringAndSize(NULL, length);
    return r->bytes ? PyBytes_AS_STRING(r->bytes) : NULL;
}

/* A message too large for the scratch buffer, claimed by the core: copied
 * once into a bytearray of its own (writable, for numpy), returned as
 * (tag, bytearray). On MemoryError the claim is given up, as the Python
 * path does. */
static PyObject *finish_claimed(Channel *self, const shmq_message *msg)
{
    PyObject *out = PyByteArray_FromStringAndSize(NULL, msg->length);
    if (!out) {
        core.pop_abandon(self->h, msg);
        return NULL;
    }
    int rc;
    char *into = PyByteArray_AS_STRING(out);
    shmq_handle *h = self->h;
    Py_BEGIN_ALLOW_THREADS
    rc = core.pop_finish(h, msg, into);
    Py_END_ALLOW_THREADS
    if (rc != SHMQ_OK) {
        Py_DECREF(out);
        return status(rc);
    }
    return Py_BuildValue("(iN)", msg->tag, out);
}

static PyObject *taken(int64_t result, PyObject *data)
{
    uint8_t tag = (uint8_t)(result >> 32);
    if (tag == 0)
        return data;
    return Py_BuildValue("(iN)", tag, data);
}

/* get(block=True, timeout=None): Queue.get itself. A message of tag 0 is
 * returned as bytes; anything else goes on in Queue._get_rest(result,
 * block, timeout), result being (tag, data) for its codec, or a status /
 * SHMQ_FAST_* (see the top of the file). */
static PyObject *get_one(Channel *self, PyObject *block, PyObject *timeout);

static PyObject *Channel_get(Channel *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *block, *timeout;
    if (block_timeout("get", args, nargs, kwnames, 0, &block, &timeout) < 0)
        return NULL;
    PyObject *result = get_one(self, block, timeout);
    if (!result || PyBytes_CheckExact(result))
        return result;
    return go_on(self, str_get_rest, result, block, timeout, NULL);
}

static PyObject *get_one(Channel *self, PyObject *block, PyObject *timeout)
{
    if (!self->h)
        return status(SHMQ_FAST_CLOSED);
    int64_t total_ns = timeout_arg(block, timeout);
    if (total_ns == -2)
        return status(SHMQ_FAST_DECLINED);
    shmq_handle *h = self->h;
    PyObject *data;
    shmq_message msg;
    /* Under the GIL, no wait: straight into a bytes object. */
    room r = {NULL, self->scratch_bytes};
    int64_t result = core.take(h, alloc_bytes, &r, &msg);
    if (result >= 0)
        return taken(result, r.bytes);
    Py_CLEAR(r.bytes);
    if (result == SHMQ_ECLAIMED) {
        if (PyErr_Occurred()) { /* out of memory: given up, as the Python path does */
            core.pop_abandon(h, &msg);
            return NULL;
        }
        return finish_claimed(self, &msg); /* larger than the scratch buffer: a bytearray, copied without the GIL */
    }
    /* Nothing there now: shmq_pop waits, feeds jobs waiting in the log,
     * repairs what dead producers left. The wait releases the GIL. */
    char *buffer = scratch_take(self);
    if (!buffer)
        return status(SHMQ_FAST_DECLINED);
    int64_t wait_ns = first_wait(total_ns);
    int rc;
    if (wait_ns == 0) {
        rc = core.pop(h, buffer, self->scratch_bytes, 0, &msg);
    } else {
        Py_BEGIN_ALLOW_THREADS
        rc = core.pop(h, buffer, self->scratch_bytes, wait_ns, &msg);
        Py_END_ALLOW_THREADS
    }
    PyObject *out;
    if (rc == SHMQ_OK) {
        data = PyBytes_FromStringAndSize(buffer, msg.length);
        out = data ? taken(((int64_t)msg.tag << 32) | msg.length, data) : NULL;
    } else if (rc == SHMQ_ECLAIMED) {
        out = finish_claimed(self, &msg);
    } else {
        if (rc == SHMQ_ESYS || rc == SHMQ_ELOG)
            self->last_errno = errno;
        out = status(rc);
    }
    self->scratch_busy = 0;
    return out;
}

/* The messages of a batch in the scratch buffer as a list of bytes; with
 * tags other than 0, or a large message claimed after them, (list, tags,
 * claimed) for the caller's codec, claimed being (tag, bytearray) or None. */
static PyObject *batch_result(Channel *self, uint32_t count, const shmq_message *claimed)
{
    PyObject *list = PyList_New(count);
    if (!list)
        return NULL;
    const char *at = self->scratch;
    int tagged = 0;
    for (uint32_t i = 0; i < count; i++) {
        PyObject *item = PyBytes_FromStringAndSize(at, self->lengths[i]);
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
        at += self->lengths[i];
        tagged |= self->tags[i];
    }
    if (!tagged && !claimed)
        return list;
    PyObject *big = Py_None;
    Py_INCREF(big);
    if (claimed) {
        Py_DECREF(big);
        big = finish_claimed(self, claimed);
        if (!big || PyLong_Check(big)) {
            Py_DECREF(list);
            return big;
        }
    }
    return Py_BuildValue("(Ny#N)", list, (const char *)self->tags, (Py_ssize_t)count, big);
}

/* get_many(max_items, wait_ns): see batch_result; or a status / SHMQ_FAST_*. */
static PyObject *Channel_get_many(Channel *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return status(SHMQ_FAST_DECLINED);
    if (!self->h)
        return status(SHMQ_FAST_CLOSED);
    long max_items = PyLong_AsLong(args[0]);
    long long wait_ns = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (max_items <= 0 || max_items > MAX_BATCH)
        return status(SHMQ_FAST_DECLINED);
    char *buffer = scratch_take(self);
    if (!buffer)
        return status(SHMQ_FAST_DECLINED);
    shmq_handle *h = self->h;
    uint32_t count = 0;
    shmq_message claimed;
    int rc = core.pop_many(h, buffer, self->scratch_bytes, (uint32_t)max_items, 0, self->lengths, self->tags,
                           &count, &claimed);
    if (rc == SHMQ_EEMPTY && wait_ns != 0) {
        Py_BEGIN_ALLOW_THREADS
        rc = core.pop_many(h, buffer, self->scratch_bytes, (uint32_t)max_items, wait_ns, self->lengths, self->tags,
                           &count, &claimed);
        Py_END_ALLOW_THREADS
    }
    PyObject *out;
    if (rc == SHMQ_OK)
        out = batch_result(self, count, claimed.span ? &claimed : NULL);
    else if (rc == SHMQ_ECLAIMED)
        out = batch_result(self, 0, &claimed);
    else {
        if (rc == SHMQ_ESYS || rc == SHMQ_ELOG)
            self->last_errno = errno;
        out = status(rc);
    }
    self->scratch_busy = 0;
    return out;
}

/* --------------------------------------------------------------- the type */

static PyObject *Channel_close(Channel *self, PyObject *unused)
{
    (void)unused;
    self->h = NULL;
    Py_RETURN_NONE;
}

static PyObject *Channel_last_errno(Channel *self, void *unused)
{
    (void)unused;
    return PyLong_FromLong(self->last_errno);
}

static int Channel_init(Channel *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"handle", "wait_unheld", "inline_max", "scratch_bytes", "owner", NULL};
    unsigned long long handle;
    int wait_unheld;
    unsigned int inline_max, scratch_bytes;
    PyObject *owner;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KpIIO", names, &handle, &wait_unheld, &inline_max,
                                     &scratch_bytes, &owner))
        return -1;
    if (!PyWeakref_CheckRef(owner)) {
        PyErr_SetString(PyExc_TypeError, "shmq._fast.Channel: owner must be a weak reference to the queue");
        return -1;
    }
    Py_INCREF(owner);
    Py_XSETREF(self->owner, owner);
    if (!core.push) {
        PyErr_SetString(PyExc_RuntimeError, "shmq._fast: bind() the core's entry points first");
        return -1;
    }
    if (scratch_bytes == 0) {
        PyErr_SetString(PyExc_ValueError, "shmq._fast.Channel: scratch_bytes must be > 0");
        return -1;
    }
    self->h = (shmq_handle *)(uintptr_t)handle;
    self->wait_unheld = wait_unheld;
    self->inline_max = inline_max;
    self->scratch_bytes = scratch_bytes;
    return 0;
}

static void Channel_dealloc(Channel *self)
{
    PyMem_RawFree(self->scratch);
    Py_XDECREF(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Channel_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Channel_put, METH_FASTCALL | METH_KEYWORDS,
     "put(obj, block=True, timeout=None): shmq.Queue.put"},
    {"put_tagged", (PyCFunction)(void (*)(void))Channel_put_tagged, METH_FASTCALL, "put_tagged(tag, data, wait_ns)"},
    {"put_many", (PyCFunction)(void (*)(void))Channel_put_many, METH_FASTCALL, "put_many(list, wait_ns, tags)"},
    {"get", (PyCFunction)(void (*)(void))Channel_get, METH_FASTCALL | METH_KEYWORDS,
     "get(block=True, timeout=None): shmq.Queue.get"},
    {"get_many", (PyCFunction)(void (*)(void))Channel_get_many, METH_FASTCALL, "get_many(max_items, wait_ns)"},
    {"close", (PyCFunction)Channel_close, METH_NOARGS, "forget the handle: later calls return CLOSED"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Channel_getset[] = {
    {"last_errno", (getter)Channel_last_errno, NULL, "errno after the last failed call (SHMQ_ESYS, SHMQ_ELOG)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmq._fast.Channel",
    .tp_doc = "The hot calls of one queue handle (shmq/channel/queue.py owns it).",
    .tp_basicsize = sizeof(Channel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Channel_init,
    .tp_dealloc = (destructor)Channel_dealloc,
    .tp_methods = Channel_methods,
    .tp_getset = Channel_getset,
};

/* bind(push, push_many, take, pop, pop_many, pop_finish, pop_abandon): the
 * addresses of the core's entry points, from the cffi module. */
static PyObject *fast_bind(PyObject *module, PyObject *args)
{
    (void)module;
    unsigned long long a[7];
    if (!PyArg_ParseTuple(args, "KKKKKKK", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6]))
        return NULL;
    for (int i = 0; i < 7; i++) {
        if (!a[i]) {
            PyErr_SetString(PyExc_ValueError, "shmq._fast.bind: an entry point's address is 0");
            return NULL;
        }
    }
    /* Function pointers from integers: the cffi module's own addresses. */
    core.push = (void *)(uintptr_t)a[0];
    core.push_many = (void *)(uintptr_t)a[1];
    core.take = (void *)(uintptr_t)a[2];
    core.pop = (void *)(uintptr_t)a[3];
    core.pop_many = (void *)(uintptr_t)a[4];
    core.pop_finish = (void *)(uintptr_t)a[5];
    core.pop_abandon = (void *)(uintptr_t)a[6];
    Py_RETURN_NONE;
}

static PyMethodDef fast_methods[] = {
    {"bind", fast_bind, METH_VARARGS, "bind(push, push_many, take, pop, pop_many, pop_finish, pop_abandon)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fast_module = {
    PyModuleDef_HEAD_INIT, "shmq._fast", "The hot calls of shmq.Queue (csrc/pyfast.c).", -1, fast_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast(void)
{
    str_put_rest = PyUnicode_InternFromString("_put_rest");
    str_get_rest = PyUnicode_InternFromString("_get_rest");
    str_put_keywords = PyUnicode_InternFromString("_put_keywords");
    str_block = PyUnicode_InternFromString("block");
    str_timeout = PyUnicode_InternFromString("timeout");
    if (!str_put_rest || !str_get_rest || !str_put_keywords || !str_block || !str_timeout)
        return NULL;
    if (PyType_Ready(&ChannelType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fast_module);
    if (!m)
        return NULL;
    Py_INCREF(&ChannelType);
    if (PyModule_AddObject(m, "Channel", (PyObject *)&ChannelType) < 0 ||
        PyModule_AddIntConstant(m, "CLOSED", SHMQ_FAST_CLOSED) < 0 ||
        PyModule_AddIntConstant(m, "DECLINED", SHMQ_FAST_DECLINED) < 0) {
        Py_DECREF(&ChannelType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
