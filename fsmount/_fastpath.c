/* fsmount._fastpath: C entry points for the FUSE callbacks that every stat and every
 * small-file create make, in place of mfusepy's ctypes ones.
 *
 * Why: a create of a 4 KiB file is 7 calls into the file system (lookup, create plus
 * libfuse's getattr, getxattr of security.capability, write, flush, release) and a stat
 * after the kernel's cache expired is one. Through ctypes each call builds argument
 * objects, a functools.partial frame and a wrapper frame before our code runs; measured,
 * that glue was about as much CPU as the work. Here each callback takes the GIL, calls
 * one Python handler with plain arguments (str path, ints, a memoryview) and converts
 * its answer; the getxattr of a name outside user.* (asked by the kernel before every
 * write(2)) is answered without Python at all.
 *
 * What stays in Python: every decision. The handlers are KeyholdFUSE's methods
 * (fsmount/filesystem.py); a handler that raises is handed back to Python's error
 * mapping (`failed`), exactly as mfusepy maps it. Nothing here knows about keys or files.
 *
 * The ops struct is mfusepy's (libfuse reads mfusepy's copy): Python passes the address
 * of each field to replace, read from mfusepy's ctypes layout, and checks beforehand that
 * `offsets()` (this file's view of struct fuse_operations from <fuse3/fuse.h>) agrees.
 */
#define PY_SSIZE_T_CLEAN
#define FUSE_USE_VERSION 31
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <stddef.h>
#include <sys/stat.h>
#include <fuse3/fuse.h>

enum { H_GETATTR, H_CREATE, H_WRITE, H_READ, H_FLUSH, H_RELEASE, H_FAILED, H_COUNT };
static const char *const handler_names[H_COUNT] = {
    "getattr", "create", "write", "read", "flush", "release", "failed",
};
static PyObject *handlers[H_COUNT];
/* mfusepy's getxattr, for the names we do not answer here (user.*) */
static int (*python_getxattr)(const char *, const char *, char *, size_t);

/* A libfuse worker thread keeps its Python thread state for its whole life: without the
 * extra PyGILState_Ensure, every call would create and destroy one (~2 us). */
static __thread int pinned;

static inline PyGILState_STATE enter(void)
{
    PyGILState_STATE state = PyGILState_Ensure();
    if (!pinned) {
        PyGILState_Ensure();
        pinned = 1;
    }
    return state;
}

static PyObject *path_or_none(const char *path)
{
    if (path == NULL)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(path, (Py_ssize_t)strlen(path), "surrogateescape");
}

static PyObject *fh_or_none(struct fuse_file_info *fi)
{
    if (fi == NULL)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(fi->fh);
}

/* The errno for an exception the handler raised (the GIL is held, the error set):
 * Python's `failed(name, exc)` maps it as mfusepy would; -EIO if even that fails. */
static int failure(const char *name)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc != NULL && tb != NULL)
        PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
#endif
    PyObject *answer = PyObject_CallFunction(handlers[H_FAILED], "sO", name, exc ? exc : Py_None);
    Py_XDECREF(exc);
    int err = -EIO;
    if (answer != NULL && PyLong_Check(answer))
        err = (int)PyLong_AsLong(answer);
    if (answer == NULL || PyErr_Occurred())
        PyErr_WriteUnraisable(handlers[H_FAILED]);
    Py_XDECREF(answer);
    return err;
}

/* Call handler `h` with a new-reference argument tuple built by the caller (NULL if
 * building it failed, the error set); its answer, or NULL with the error set. */
static PyObject *call(int h, PyObject *args)
{
    if (args == NULL)
        return NULL;
    PyObject *answer = PyObject_Call(handlers[h], args, NULL);
    Py_DECREF(args);
    return answer;
}

/* `call`, for handlers that answer an int (None is 0): it, or the mapped errno. */
static int call_int(int h, PyObject *args)
{
    PyObject *answer = call(h, args);
    if (answer == NULL)
        return failure(handler_names[h]);
    long value = answer == Py_None ? 0 : PyLong_AsLong(answer);
    Py_DECREF(answer);
    if (value == -1 && PyErr_Occurred())
        return failure(handler_names[h]);
    return (int)value;
}

static int fast_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    PyGILState_STATE gil = enter();
    int err;
    PyObject *answer = call(H_GETATTR, Py_BuildValue("(NN)", path_or_none(path), fh_or_none(fi)));
    if (answer == NULL) {
        err = failure("getattr");
    } else if (PyBytes_Check(answer) && PyBytes_GET_SIZE(answer) == (Py_ssize_t)sizeof(*st)) {
        memcpy(st, PyBytes_AS_STRING(answer), sizeof(*st));
        err = 0;
    } else if (PyLong_Check(answer)) {
        long value = PyLong_AsLong(answer); /* a negative errno */
        err = (value == -1 && PyErr_Occurred()) ? failure("getattr") : (int)value;
    } else {
        PyErr_Format(PyExc_TypeError, "getattr answered %R: packed struct stat or -errno expected", answer);
        err = failure("getattr");
    }
    Py_XDECREF(answer);
    PyGILState_Release(gil);
    return err;
}

static int fast_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    PyGILState_STATE gil = enter();
    int err = 0;
    PyObject *answer = call(H_CREATE, Py_BuildValue("(NIi)", path_or_none(path), (unsigned int)mode, fi->flags));
    if (answer == NULL) {
        err = failure("create");
    } else {
        unsigned long long fh = PyLong_AsUnsignedLongLong(answer);
        if (fh == (unsigned long long)-1 && PyErr_Occurred())
            err = failure("create");
        else
            fi->fh = fh;
    }
    Py_XDECREF(answer);
    PyGILState_Release(gil);
    return err;
}

/* write and read hand the handler a memoryview of libfuse's buffer, valid for this call
 * only: it is released afterwards, so a handler that kept it gets an error on use,
 * never a dangling pointer. */
static int call_with_view(int h, char *buf, size_t size, int access, off_t offset, struct fuse_file_info *fi)
{
    PyObject *view = PyMemoryView_FromMemory(buf, (Py_ssize_t)size, access);
    int err = call_int(h, view ? Py_BuildValue("(OLK)", view, (long long)offset, (unsigned long long)fi->fh) : NULL);
    if (view != NULL) {
        PyObject *done = PyObject_CallMethod(view, "release", NULL);
        if (done == NULL)
            PyErr_WriteUnraisable(view); /* still exported by the handler: a bug there */
        Py_XDECREF(done);
        Py_DECREF(view);
    }
    return err;
}

static int fast_write(const char *path, const char *buf, size_t size, off_t offset, struct fuse_file_info *fi)
{
    (void)path;
    PyGILState_STATE gil = enter();
    int err = call_with_view(H_WRITE, (char *)buf, size, PyBUF_READ, offset, fi);
    PyGILState_Release(gil);
    return err;
}

static int fast_read(const char *path, char *buf, size_t size, off_t offset, struct fuse_file_info *fi)
{
    (void)path;
    PyGILState_STATE gil = enter();
    int err = call_with_view(H_READ, buf, size, PyBUF_WRITE, offset, fi);
    PyGILState_Release(gil);
    return err;
}

static int fast_flush(const char *path, struct fuse_file_info *fi)
{
    PyGILState_STATE gil = enter();
    int err = call_int(H_FLUSH, Py_BuildValue("(NK)", path_or_none(path), (unsigned long long)fi->fh));
    PyGILState_Release(gil);
    return err;
}

static int fast_release(const char *path, struct fuse_file_info *fi)
{
    PyGILState_STATE gil = enter();
    int err = call_int(H_RELEASE, Py_BuildValue("(NK)", path_or_none(path), (unsigned long long)fi->fh));
    PyGILState_Release(gil);
    return err;
}

/* The kernel asks for security.capability before every write(2) to a file system that
 * has xattrs; keyhold stores only user.* names, so every other name has no value. */
static int fast_getxattr(const char *path, const char *name, char *value, size_t size)
{
    if (strncmp(name, "user.", 5) != 0)
        return -ENODATA;
    return python_getxattr(path, name, value, size);
}

#define FIELD(name, h) {#name, offsetof(struct fuse_operations, name), (void *)fast_##name, h}
static const struct {
    const char *name;
    size_t offset;
    void *entry;
    int handler; /* its Python handler, or -1: none (getxattr) */
} fields[] = {
    FIELD(getattr, H_GETATTR), FIELD(create, H_CREATE), FIELD(write, H_WRITE), FIELD(read, H_READ),
    FIELD(flush, H_FLUSH), FIELD(release, H_RELEASE), FIELD(getxattr, -1),
};
#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static PyObject *offsets(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyObject *out = PyDict_New();
    for (size_t i = 0; out && i < NFIELDS; i++) {
        PyObject *v = PyLong_FromSize_t(fields[i].offset);
        if (v == NULL || PyDict_SetItemString(out, fields[i].name, v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(v);
    }
    return out;
}

/* install(ops_address, handlers): point fields of mfusepy's struct fuse_operations at
 * `ops_address` to the entry points here. `handlers` maps each name of handler_names
 * to a callable, or to None to leave that field as it is ("failed" is required). Only
 * fields mfusepy set are replaced: an operation the file system lacks stays absent.
 * getxattr's own fallback is the entry it replaces. Call before libfuse reads the
 * struct, once per process. */
static PyObject *install(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long address;
    PyObject *given;
    if (!PyArg_ParseTuple(args, "KO!", &address, &PyDict_Type, &given))
        return NULL;
    PyObject *found[H_COUNT];
    for (int h = 0; h < H_COUNT; h++) {
        found[h] = PyDict_GetItemString(given, handler_names[h]);
        if (found[h] == Py_None && h != H_FAILED)
            found[h] = NULL;
        else if (found[h] == NULL || !PyCallable_Check(found[h]))
            return PyErr_Format(PyExc_ValueError, "handler %s missing or not callable", handler_names[h]);
    }
    if (handlers[H_FAILED] != NULL)
        return PyErr_Format(PyExc_RuntimeError, "the fast path serves another mount of this process");
    char *ops = (char *)(uintptr_t)address;
    for (int h = 0; h < H_COUNT; h++) {
        Py_XINCREF(found[h]);
        Py_XSETREF(handlers[h], found[h]);
    }
    for (size_t i = 0; i < NFIELDS; i++) {
        void **slot = (void **)(ops + fields[i].offset);
        if (*slot == NULL || (fields[i].handler >= 0 && handlers[fields[i].handler] == NULL))
            continue;
        if (fields[i].handler < 0)
            python_getxattr = *slot;
        *slot = fields[i].entry;
    }
    Py_RETURN_NONE;
}

/* uninstall(): forget the handlers once the mount they served has ended (libfuse has
 * returned: no callback can run), so that a later mount of this process may install. */
static PyObject *uninstall(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    for (int h = 0; h < H_COUNT; h++)
        Py_CLEAR(handlers[h]);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"uninstall", uninstall, METH_NOARGS, "Forget the handlers of a mount that has ended."},
    {"offsets", offsets, METH_NOARGS, "Byte offset of each replaced field in struct fuse_operations."},
    {"install", install, METH_VARARGS, "install(ops_address, handlers): use the C entry points."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fsmount._fastpath",
    "C entry points for the hot FUSE callbacks (see fsmount/_fastpath.c).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    return PyModule_Create(&module);
}
