/*
 * Maglev lookup-table population (Maglev paper, NSDI 2016, section 3.4): the hot loop behind
 * nodeagent.maglev. Python validates, sorts and labels the backends; this file hashes them and
 * fills the table with the GIL released.
 *
 * Per backend i (identity string id_i, table size M prime, cluster seed s):
 *   offset_i = siphash24(s ^ OFFSET_K0, OFFSET_K1, id_i) mod M
 *   skip_i   = siphash24(s ^ SKIP_K0,   SKIP_K1,   id_i) mod (M - 1) + 1
 *   permutation_i[j] = (offset_i + j * skip_i) mod M
 * Backends take turns in the order given (Python passes them sorted); on its turn a backend
 * claims the first slot of its permutation that is still empty. With weights, a backend's turn
 * comes round in proportion to its weight (Katran's MaglevHashV2 scheme): every round each
 * backend adds its weight to a credit and takes a turn when the credit reaches the largest
 * weight, paying that weight back. Equal weights give exactly the unweighted table.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ASCII "maglev:o"/"weir-off" and "maglev:s"/"weir-skp", little-endian: two independent
 * SipHash keys. The seed is xored into k0, so a new seed gives every backend new permutations. */
#define OFFSET_K0 UINT64_C(0x6f3a76656c67616d)
#define OFFSET_K1 UINT64_C(0x66666f2d72696577)
#define SKIP_K0 UINT64_C(0x733a76656c67616d)
#define SKIP_K1 UINT64_C(0x706b732d72696577)

#define EMPTY UINT32_MAX
/* Positions stay below 2^31 so that pos + skip never wraps a uint32. */
#define MAX_SIZE (UINT32_C(1) << 31)

static inline uint64_t rotl64(uint64_t x, unsigned b) { return (x << b) | (x >> (64 - b)); }

static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = rotl64(v1, 13);                                                                       \
        v1 ^= v0;                                                                                  \
        v0 = rotl64(v0, 32);                                                                       \
        v2 += v3;                                                                                  \
        v3 = rotl64(v3, 16);                                                                       \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = rotl64(v3, 21);                                                                       \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = rotl64(v1, 17);                                                                       \
        v1 ^= v2;                                                                                  \
        v2 = rotl64(v2, 32);                                                                       \
    } while (0)

/* SipHash-2-4 (Aumasson and Bernstein, 2012), key (k0, k1) as two little-endian words. */
static uint64_t siphash24(uint64_t k0, uint64_t k1, const uint8_t *p, size_t len)
{
    uint64_t v0 = k0 ^ UINT64_C(0x736f6d6570736575);
    uint64_t v1 = k1 ^ UINT64_C(0x646f72616e646f6d);
    uint64_t v2 = k0 ^ UINT64_C(0x6c7967656e657261);
    uint64_t v3 = k1 ^ UINT64_C(0x7465646279746573);
    const uint8_t *end = p + (len & ~(size_t)7);
    uint64_t m;

    for (; p != end; p += 8) {
        m = load_le64(p);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    m = (uint64_t)(len & 0xff) << 56;
    for (unsigned i = 0; i < (len & 7); i++)
        m |= (uint64_t)p[i] << (8 * i);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* A backend's place in its permutation: pos is permutation[next], label what it writes. */
struct turn {
    uint32_t pos;
    uint32_t skip;
    uint32_t label;
};

static inline uint32_t advance(uint32_t pos, uint32_t skip, uint32_t m)
{
    pos += skip;
    return pos >= m ? pos - m : pos;
}

/* One turn: claim the first empty slot of the backend's permutation. M prime and
 * 1 <= skip < M make the permutation visit every slot, so this ends while a slot is empty. */
static inline void claim(struct turn *t, uint32_t *table, uint32_t m)
{
    uint32_t pos = t->pos;
    while (table[pos] != EMPTY)
        pos = advance(pos, t->skip, m);
    table[pos] = t->label;
    t->pos = advance(pos, t->skip, m);
}

static void fill_unweighted(struct turn *t, size_t n, uint32_t *table, uint32_t m)
{
    uint32_t filled = 0;
    for (;;) {
        for (size_t i = 0; i < n; i++) {
            claim(&t[i], table, m);
            if (++filled == m)
                return;
        }
    }
}

/* credit[] starts at zero. Weights are >= 1 and the largest one takes a turn every round, so
 * this ends after at most M rounds. */
static void fill_weighted(struct turn *t, const uint32_t *weight, uint64_t *credit, size_t n,
                          uint32_t *table, uint32_t m)
{
    uint32_t wmax = 0;
    uint32_t filled = 0;
    for (size_t i = 0; i < n; i++)
        wmax = weight[i] > wmax ? weight[i] : wmax;
    for (;;) {
        for (size_t i = 0; i < n; i++) {
            credit[i] += weight[i];
            if (credit[i] < wmax)
                continue;
            credit[i] -= wmax;
            claim(&t[i], table, m);
            if (++filled == m)
                return;
        }
    }
}

static int is_prime(uint32_t m)
{
    if (m < 2)
        return 0;
    for (uint32_t f = 2; f * f <= m; f++)
        if (m % f == 0)
            return 0;
    return 1;
}

/* Get a C-contiguous buffer of n uint32 (numpy dtype uint32), writable if asked. */
static int get_u32_buffer(PyObject *obj, Py_buffer *view, int writable, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    const char *fmt = view->format ? view->format : "B";
    size_t fl = strlen(fmt);
    if (view->itemsize != 4 || fl == 0 || fmt[fl - 1] != 'I' || view->ndim != 1) {
        PyErr_Format(PyExc_TypeError, "%s must be a 1-d uint32 buffer", what);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(populate_doc,
             "populate(ids, labels, weights, seed, out) -> None\n\n"
             "Fill out (uint32[M], M prime) with labels: ids is a tuple of bytes in turn order,\n"
             "labels a uint32[len(ids)] buffer (what each backend writes), weights None or a\n"
             "uint32[len(ids)] buffer of weights >= 1, seed an unsigned 64-bit int.");

static PyObject *populate(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ids, *labels_obj, *weights_obj, *seed_obj, *out_obj;
    Py_buffer labels = {0}, weights = {0}, out = {0};
    struct turn *turns = NULL;
    uint64_t *credit = NULL;
    const char **data = NULL;
    Py_ssize_t *lens = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "O!OOOO:populate", &PyTuple_Type, &ids, &labels_obj,
                          &weights_obj, &seed_obj, &out_obj))
        return NULL;
    uint64_t seed = PyLong_AsUnsignedLongLong(seed_obj);
    if (PyErr_Occurred())
        return NULL;

    size_t n = (size_t)PyTuple_GET_SIZE(ids);
    if (n == 0 || n >= EMPTY) {
        PyErr_SetString(PyExc_ValueError, "need between 1 and 2**32 - 2 backends");
        return NULL;
    }
    if (get_u32_buffer(labels_obj, &labels, 0, "labels") < 0)
        goto done;
    if (weights_obj != Py_None && get_u32_buffer(weights_obj, &weights, 0, "weights") < 0)
        goto done;
    if (get_u32_buffer(out_obj, &out, 1, "out") < 0)
        goto done;
    if ((size_t)labels.shape[0] != n || (weights.buf && (size_t)weights.shape[0] != n)) {
        PyErr_SetString(PyExc_ValueError, "labels and weights must have one entry per id");
        goto done;
    }
    if (out.shape[0] < 2 || (uint64_t)out.shape[0] >= MAX_SIZE ||
        !is_prime((uint32_t)out.shape[0])) {
        PyErr_Format(PyExc_ValueError, "table size %zd is not a prime below 2**31",
                     out.shape[0]);
        goto done;
    }
    uint32_t m = (uint32_t)out.shape[0];
    const uint32_t *label = labels.buf;
    const uint32_t *weight = weights.buf;

    turns = PyMem_Malloc(n * sizeof(*turns));
    data = PyMem_Malloc(n * sizeof(*data));
    lens = PyMem_Malloc(n * sizeof(*lens));
    credit = weight ? PyMem_Calloc(n, sizeof(*credit)) : NULL;
    if (!turns || !data || !lens || (weight && !credit)) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *id = PyTuple_GET_ITEM(ids, i);
        if (!PyBytes_Check(id)) {
            PyErr_SetString(PyExc_TypeError, "ids must be bytes");
            goto done;
        }
        if (label[i] == EMPTY || (weight && weight[i] == 0)) {
            PyErr_SetString(PyExc_ValueError, "labels must be < 2**32 - 1 and weights >= 1");
            goto done;
        }
        data[i] = PyBytes_AS_STRING(id);
        lens[i] = PyBytes_GET_SIZE(id);
    }

    /* The tuple keeps the bytes alive and they are immutable: safe to read without the GIL. */
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = (const uint8_t *)data[i];
        size_t len = (size_t)lens[i];
        turns[i].pos = (uint32_t)(siphash24(seed ^ OFFSET_K0, OFFSET_K1, p, len) % m);
        turns[i].skip = (uint32_t)(siphash24(seed ^ SKIP_K0, SKIP_K1, p, len) % (m - 1)) + 1;
        turns[i].label = label[i];
    }
    uint32_t *table = out.buf;
    memset(table, 0xff, (size_t)m * sizeof(*table));
    if (weight)
        fill_weighted(turns, weight, credit, n, table, m);
    else
        fill_unweighted(turns, n, table, m);
    Py_END_ALLOW_THREADS

    result = Py_NewRef(Py_None);
done:
    PyMem_Free(turns);
    PyMem_Free(data);
    PyMem_Free(lens);
    PyMem_Free(credit);
    if (labels.obj)
        PyBuffer_Release(&labels);
    if (weights.obj)
        PyBuffer_Release(&weights);
    if (out.obj)
        PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(siphash24_doc, "siphash24(k0, k1, data) -> int: SipHash-2-4 of data under key "
                            "(k0, k1), the hash behind offsets and skips.");

static PyObject *py_siphash24(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long k0, k1;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "KKy*:siphash24", &k0, &k1, &data))
        return NULL;
    uint64_t h = siphash24(k0, k1, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLongLong(h);
}

static PyMethodDef methods[] = {
    {"populate", populate, METH_VARARGS, populate_doc},
    {"siphash24", py_siphash24, METH_VARARGS, siphash24_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_maglev",
    .m_doc = "Maglev table population (NSDI 2016, section 3.4); use nodeagent.maglev.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__maglev(void)
{
    PyObject *mod = PyModule_Create(&module);
    if (!mod)
        return NULL;
    PyObject *off = Py_BuildValue("(KK)", (unsigned long long)OFFSET_K0,
                                  (unsigned long long)OFFSET_K1);
    PyObject *skip = Py_BuildValue("(KK)", (unsigned long long)SKIP_K0,
                                   (unsigned long long)SKIP_K1);
    int rc = (off && skip) ? 0 : -1;
    if (rc == 0)
        rc = PyModule_AddObjectRef(mod, "OFFSET_KEY", off);
    if (rc == 0)
        rc = PyModule_AddObjectRef(mod, "SKIP_KEY", skip);
    Py_XDECREF(off);
    Py_XDECREF(skip);
    if (rc < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
