# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled scanning core: Debian's libhs driven from C, and the scanner's per-match loop typed.

Why: on dense data the Python scanner spent 82-84 % of its time in per-match Python (2.3-3.0 us a
match) and the binding's Python callback takes the GIL back on every match. Here the chunk scan runs
with the GIL released and a C callback appending ``(id, end)`` to a growable C array; the per-match
loop (:func:`process`) is the Python reference ``ExchangeScanner._process`` line for line, with typed
offsets, C byte searches and C twins of the validators, calling Python only where the reference
does something Python-shaped (variable-width extraction with ``re``, header/column context,
finishing a record). ``tests/test_core_diff.py`` holds both paths to identical results.

Measured on the dense breach CSV (perf, session 13), and what was done about it: the dob validator's
Python call (a C twin now), ``re`` for the name patterns' required words (read off the bytes when
the group leads the match: :func:`_lead_group`), libhs's leftmost-start scan of a 40-80 byte window
per variable-width value (2-3 us on names; now the word starts are tried with an anchored database
first where cheaper: :func:`value_start_c`), emails through ``re`` (libhs cannot give that pattern a
leftmost start) and ``_count_contact`` in Python (both in C); session 14: the open record's entries
are C structs (:class:`RecBuf`, no tuple or int per value) and the adds to the distinct-count
tables are batched with their slots prefetched far ahead (:func:`batch_add`). What remains on that
corpus (docs/benchmarks.md, compiled core): those tables' memory stalls and growth, word-set lookups
missing L2, the loop itself. The loop walks a chunk's hits without the GIL and finishes the records
it queued in one GIL-held batch (:func:`process`).

Databases come from this module's own ``hs_compile_multi`` (a database serialized by the PyPI
wheel's statically linked libhs is not guaranteed to load in Debian's). Scratch: one per thread
(``__thread``), grown with ``hs_alloc_scratch`` for every database it meets, never shared.
"""
cimport cython
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memchr, memcmp, memcpy, memset
from libc.stdint cimport uint64_t, int64_t, INT64_MAX
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize, PyBytes_Check
from cpython.object cimport PyObject_Hash
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from cpython.list cimport PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.sequence cimport PySequence_GetSlice
from libc.time cimport time, time_t

cdef extern from "Python.h":
    Py_hash_t _Py_HashBytes(const void *src, Py_ssize_t n)     # hash(bytes): the same SipHash and key

cdef extern from *:
    """
    #include <hs/hs.h>
    #include <string.h>
    #include <pthread.h>
    static __thread hs_scratch_t *dlp_tls_scratch = NULL;
    /* hs_alloc_scratch on a scratch that already fits still cost ~3 % on dense data: each thread
       remembers the databases its scratch was grown for (a scratch only grows). A freed database's
       address may come back as a bigger one: freeing any database bumps the epoch, which voids
       every thread's list. */
    static __thread const void *dlp_tls_sized[8];
    static __thread int dlp_tls_nsized = 0;
    static __thread unsigned long dlp_tls_epoch = 0;
    static volatile unsigned long dlp_epoch = 0;
    /* A thread's scratch is freed when the thread exits (a pthread key's destructor): a worker pool
       that replaces its threads does not leak one scratch per thread that ever scanned. */
    static pthread_key_t dlp_scratch_key;
    static pthread_once_t dlp_key_once = PTHREAD_ONCE_INIT;
    static int dlp_key_ok = 0;
    static long dlp_live = 0;                    /* scratches allocated and not yet freed */
    static void dlp_scratch_exit(void *s) {
        if (s != NULL) {
            hs_free_scratch((hs_scratch_t *)s);
            __atomic_sub_fetch(&dlp_live, 1, __ATOMIC_RELAXED);
        }
        dlp_tls_scratch = NULL;
        dlp_tls_nsized = 0;
    }
    static void dlp_make_key(void) { dlp_key_ok = pthread_key_create(&dlp_scratch_key, dlp_scratch_exit) == 0; }
    static long dlp_live_scratches(void) { return __atomic_load_n(&dlp_live, __ATOMIC_RELAXED); }
    static int dlp_scratch_for(const hs_database_t *db) {
        int k, rc;
        hs_scratch_t *before = dlp_tls_scratch;
        if (dlp_tls_epoch != dlp_epoch) { dlp_tls_nsized = 0; dlp_tls_epoch = dlp_epoch; }
        if (before != NULL)
            for (k = 0; k < dlp_tls_nsized; k++) if (dlp_tls_sized[k] == (const void *)db) return HS_SUCCESS;
        rc = hs_alloc_scratch(db, &dlp_tls_scratch);
        if (rc == HS_SUCCESS) {
            if (dlp_tls_nsized == 8) dlp_tls_nsized = 0;
            dlp_tls_sized[dlp_tls_nsized++] = (const void *)db;
        } else {
            dlp_tls_nsized = 0;     /* a failed grow frees the old scratch (NULL): it fits nothing now */
        }
        if (dlp_tls_scratch != before) {
            if (before == NULL) __atomic_add_fetch(&dlp_live, 1, __ATOMIC_RELAXED);
            else if (dlp_tls_scratch == NULL) __atomic_sub_fetch(&dlp_live, 1, __ATOMIC_RELAXED);
            pthread_once(&dlp_key_once, dlp_make_key);
            if (dlp_key_ok) pthread_setspecific(dlp_scratch_key, dlp_tls_scratch);
        }
        return rc;
    }
    /* for tests: size a scratch for db in a native thread that exits (joined: its TLS destructors ran) */
    typedef struct { const hs_database_t *db; int rc; } dlp_tjob;
    static void *dlp_tjob_run(void *arg) { dlp_tjob *j = (dlp_tjob *)arg; j->rc = dlp_scratch_for(j->db); return NULL; }
    static int dlp_scratch_in_thread(const hs_database_t *db) {
        pthread_t t;
        dlp_tjob j;
        j.db = db;
        j.rc = -1;
        if (pthread_create(&t, NULL, dlp_tjob_run, &j) != 0) return -1;
        pthread_join(t, NULL);
        return j.rc;
    }
    static void dlp_forget_databases(void) { dlp_epoch++; }
    /* The value-start databases (one small block-mode database per value regex) of one engine: a
       second per-thread scratch grown for all of them at once, redone when the thread meets another
       engine's set or any database was freed. */
    static __thread hs_scratch_t *dlp_som_scratch = NULL;
    static __thread const void *dlp_som_owner = NULL;
    static __thread unsigned long dlp_som_epoch = 0;
    /* freed when its thread exits (a pthread key's destructor), like the stream scratch */
    static pthread_key_t dlp_som_key;
    static pthread_once_t dlp_som_once = PTHREAD_ONCE_INIT;
    static int dlp_som_key_ok = 0;
    static void dlp_som_exit(void *s) {
        if (s != NULL) hs_free_scratch((hs_scratch_t *)s);
        dlp_som_scratch = NULL;
        dlp_som_owner = NULL;
    }
    static void dlp_som_make_key(void) { dlp_som_key_ok = pthread_key_create(&dlp_som_key, dlp_som_exit) == 0; }
    static int dlp_som_scratch_for(const void *owner, hs_database_t *const *dbs, int n) {
        int k, rc = HS_SUCCESS;
        hs_scratch_t *before = dlp_som_scratch;
        if (before != NULL && dlp_som_owner == owner && dlp_som_epoch == dlp_epoch) return HS_SUCCESS;
        for (k = 0; k < n && rc == HS_SUCCESS; k++)
            if (dbs[k] != NULL) rc = hs_alloc_scratch(dbs[k], &dlp_som_scratch);
        dlp_som_owner = rc == HS_SUCCESS ? owner : NULL;
        dlp_som_epoch = dlp_epoch;
        if (dlp_som_scratch != before) {
            pthread_once(&dlp_som_once, dlp_som_make_key);
            if (dlp_som_key_ok) pthread_setspecific(dlp_som_key, dlp_som_scratch);
        }
        return rc;
    }
    static const void *dlp_memrchr(const void *s, int c, size_t n) { return memrchr(s, c, n); }
    static inline void dlp_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
    /* a[0:8] sorted by Knuth's 19-comparator network, each step a min/max (cmov, no branch): a
       record's handful of value hashes are random, so an insertion sort's branches mispredicted */
    #define DLP_CX(i, j) { int64_t x_ = a[i], y_ = a[j]; a[i] = x_ < y_ ? x_ : y_; a[j] = x_ < y_ ? y_ : x_; }
    static inline void dlp_sort8(int64_t *a) {
        DLP_CX(0,1) DLP_CX(2,3) DLP_CX(4,5) DLP_CX(6,7) DLP_CX(0,2) DLP_CX(1,3) DLP_CX(4,6) DLP_CX(5,7)
        DLP_CX(1,2) DLP_CX(5,6) DLP_CX(0,4) DLP_CX(3,7) DLP_CX(1,5) DLP_CX(2,6) DLP_CX(1,4) DLP_CX(3,6)
        DLP_CX(2,4) DLP_CX(3,5) DLP_CX(3,4)
    }
    /* the delimiters in b[lo:hi], or -1 when a '"' is there (a quoted field: the caller asks the
       reference's parser): one pass, 8 bytes a step (a byte equal to c is a zero byte of x ^ c*ONES,
       flagged exactly by its top bit). Was a memchr for '"' and a byte loop over the same span, ~17 %
       of the per-match loop on the dense CSV. */
    static inline Py_ssize_t dlp_count_unquoted(const char *b, Py_ssize_t lo, Py_ssize_t hi, char c) {
        const uint64_t ones = 0x0101010101010101ULL, low7 = 0x7F7F7F7F7F7F7F7FULL;
        const uint64_t cq = ones * 0x22u, cd = ones * (unsigned char)c;
        Py_ssize_t out = 0, k = lo;
        uint64_t x, t;
        for (; k + 8 <= hi; k += 8) {
            memcpy(&x, b + k, 8);
            t = x ^ cq;
            if (~(((t & low7) + low7) | t | low7)) return -1;
            t = x ^ cd;
            out += (Py_ssize_t)(((~(((t & low7) + low7) | t | low7) >> 7) * ones) >> 56);   /* no popcnt at -O2 */
        }
        for (; k < hi; k++) {
            if (b[k] == '"') return -1;
            out += b[k] == c;
        }
        return out;
    }
    /* Distinct tables of 64 KiB and more, kept for the next exchange when freed (at most 8 of them,
       8 MiB in all): a dense exchange grows eight tables to ~1 MiB each, and fresh ones cost a page
       fault per 4 KiB (measured ~4 % of a dense scan, kernel time) where reusing one costs a memset.
       Callers hold the GIL (the tables belong to Python objects): no lock. */
    /* A fresh table of 128 KiB or more is its own mapping, populated at once (MAP_POPULATE: one call
       maps and zeroes its pages, where calloc's mapping took a fault per 4 KiB on the first random
       adds). The pool only refills when the exchange's scanner is collected, often later than the
       next dense exchange (a reference cycle): then every big table is fresh. */
    #include <sys/mman.h>
    #ifndef MAP_POPULATE
    #define MAP_POPULATE 0
    #endif
    #define DLP_MAP_MIN ((size_t)128 << 10)
    #define DLP_POOL_N 8
    #define DLP_POOL_MIN ((size_t)64 << 10)
    #define DLP_POOL_MAX ((size_t)8 << 20)
    static void *dlp_pool_p[DLP_POOL_N];
    static size_t dlp_pool_n[DLP_POOL_N];
    static size_t dlp_pool_bytes = 0;
    /* A pooled table of n bytes, not zeroed (NULL: none). Takes the pool: call with the GIL. */
    static void *dlp_pool_take(size_t n) {
        int k;
        if (n >= DLP_POOL_MIN)
            for (k = 0; k < DLP_POOL_N; k++)
                if (dlp_pool_p[k] != NULL && dlp_pool_n[k] == n) {
                    void *p = dlp_pool_p[k];
                    dlp_pool_p[k] = NULL;
                    dlp_pool_bytes -= n;
                    return p;
                }
        return NULL;
    }
    /* ``p`` (from dlp_pool_take) zeroed, or a fresh zeroed table of n bytes when p is NULL. Touches
       no pool: safe without the GIL (Distinct._grow zeroes and maps 0.5-2 MiB tables there). */
    static void *dlp_tab_zeroed(void *p, size_t n) {
        if (p != NULL) {
            memset(p, 0, n);
            return p;
        }
        if (n >= DLP_MAP_MIN) {
            p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
            return p == MAP_FAILED ? NULL : p;
        }
        return calloc(n, 1);
    }
    static void dlp_tab_release(void *p, size_t n) {
        if (p == NULL) return;
        if (n >= DLP_MAP_MIN) munmap(p, n); else free(p);
    }
    static void dlp_tab_free(void *p, size_t n) {
        int k, small = -1;
        if (p == NULL || n < DLP_POOL_MIN || n > DLP_POOL_MAX) { dlp_tab_release(p, n); return; }
        /* the biggest tables are the ones worth keeping: make room by dropping smaller ones */
        for (;;) {
            small = -1;
            for (k = 0; k < DLP_POOL_N; k++)
                if (dlp_pool_p[k] == NULL) { if (dlp_pool_bytes + n <= DLP_POOL_MAX) break; }
                else if (dlp_pool_n[k] < n && (small < 0 || dlp_pool_n[k] < dlp_pool_n[small])) small = k;
            if (k < DLP_POOL_N) {
                dlp_pool_p[k] = p;
                dlp_pool_n[k] = n;
                dlp_pool_bytes += n;
                return;
            }
            if (small < 0) { dlp_tab_release(p, n); return; }
            dlp_tab_release(dlp_pool_p[small], dlp_pool_n[small]);
            dlp_pool_bytes -= dlp_pool_n[small];
            dlp_pool_p[small] = NULL;
        }
    }
    /* HyperLogLog.add (sensor.detect.distinct) in C: MurmurHash3's finaliser over the hash as an
       unsigned 64-bit value, register = its top p bits, rank = q - bit_length(its low q bits) + 1,
       kept if higher; 1 when the register grew (the sketch changed), as add answers. */
    static inline int dlp_hll_add(uint64_t x, unsigned char *regs, int p) {
        int q = 64 - p;
        uint64_t v;
        unsigned int rank;
        x ^= x >> 33;
        x *= 0xFF51AFD7ED558CCDULL;
        x ^= x >> 33;
        x *= 0xC4CEB9FE1A85EC53ULL;
        x ^= x >> 33;
        v = x & ((((uint64_t)1) << q) - 1);
        rank = (unsigned int)q - (v ? (unsigned int)(64 - __builtin_clzll(v)) : 0u) + 1u;
        if (rank > regs[x >> q]) {
            regs[x >> q] = (unsigned char)rank;
            return 1;
        }
        return 0;
    }
    /* DistinctCounter._switch's loop: every hash of an open-addressing table (0 marks an empty slot;
       ``has_zero``: the hash 0 is in the set) added to the registers. A register keeps a maximum:
       the order of the adds does not change the sketch. */
    static void dlp_hll_fold(const Py_hash_t *tab, size_t slots, int has_zero, unsigned char *regs, int p) {
        size_t k;
        for (k = 0; k < slots; k++)
            if (tab[k] != 0)
                dlp_hll_add((uint64_t)tab[k], regs, p);
        if (has_zero)
            dlp_hll_add(0, regs, p);
    }
    static size_t dlp_pool_held(void) { return dlp_pool_bytes; }
    /* a cheap clock for comparing two ways of one step (the TSC where there is one: ~10 ns, where
       clock_gettime costs ~25-40 ns under a hypervisor); only differences of it are used */
    #if defined(__x86_64__) || defined(__i386__)
    #include <x86intrin.h>
    static inline double dlp_ticks(void) { return (double)__rdtsc(); }
    #else
    #include <time.h>
    static inline double dlp_ticks(void) {
        struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec * 1e9 + ts.tv_nsec;
    }
    #endif
    """
    ctypedef struct hs_database_t:
        pass
    ctypedef struct hs_scratch_t:
        pass
    ctypedef struct hs_stream_t:
        pass
    ctypedef struct hs_compile_error_t:
        char *message
        int expression
    ctypedef int (*match_event_handler)(unsigned int id, unsigned long long frm, unsigned long long to,
                                        unsigned int flags, void *context) noexcept nogil
    int HS_SUCCESS
    int HS_SCAN_TERMINATED
    int HS_MODE_STREAM
    int HS_MODE_BLOCK
    int HS_FLAG_SOM_LEFTMOST
    int HS_FLAG_CASELESS
    int hs_scan(const hs_database_t *db, const char *data, unsigned int length, unsigned int flags,
                hs_scratch_t *scratch, match_event_handler onEvent, void *context) nogil
    hs_scratch_t *dlp_tls_scratch
    const void *dlp_memrchr(const void *s, int c, size_t n) nogil
    void dlp_prefetch(const void *p) nogil
    void dlp_sort8(int64_t *a) nogil
    Py_ssize_t dlp_count_unquoted(const char *b, Py_ssize_t lo, Py_ssize_t hi, char c) nogil
    void *dlp_pool_take(size_t n)
    void *dlp_tab_zeroed(void *p, size_t n) nogil
    void dlp_hll_fold(const Py_hash_t *tab, size_t slots, int has_zero, unsigned char *regs, int p) nogil
    int dlp_hll_add(uint64_t x, unsigned char *regs, int p) nogil
    void dlp_tab_free(void *p, size_t n)
    size_t dlp_pool_held()
    int posix_memalign(void **memptr, size_t alignment, size_t size) nogil
    double dlp_ticks() nogil
    int scratch_for "dlp_scratch_for"(const hs_database_t *db) nogil
    void dlp_forget_databases() nogil
    long dlp_live_scratches() nogil
    int dlp_scratch_in_thread(const hs_database_t *db) nogil
    int hs_free_scratch(hs_scratch_t *scratch) nogil
    hs_scratch_t *dlp_som_scratch
    int som_scratch_for "dlp_som_scratch_for"(const void *owner, hs_database_t *const *dbs, int n) nogil
    int hs_compile_multi(const char *const *expressions, const unsigned int *flags, const unsigned int *ids,
                         unsigned int elements, unsigned int mode, const void *platform, hs_database_t **db,
                         hs_compile_error_t **error) nogil
    int hs_free_compile_error(hs_compile_error_t *error) nogil
    int hs_free_database(hs_database_t *db) nogil
    int hs_serialize_database(const hs_database_t *db, char **bytes, size_t *length) nogil
    int hs_deserialize_database(const char *bytes, size_t length, hs_database_t **db) nogil
    int hs_alloc_scratch(const hs_database_t *db, hs_scratch_t **scratch) nogil
    int hs_open_stream(const hs_database_t *db, unsigned int flags, hs_stream_t **stream) nogil
    int hs_scan_stream(hs_stream_t *id, const char *data, unsigned int length, unsigned int flags,
                       hs_scratch_t *scratch, match_event_handler onEvent, void *ctxt) nogil
    int hs_close_stream(hs_stream_t *id, hs_scratch_t *scratch, match_event_handler onEvent, void *ctxt) nogil
    const char *hs_version() nogil


class CoreError(Exception):
    """libhs refused something; ``expression`` is the index of the expression at fault, or -1."""

    def __init__(self, message: str, expression: int = -1):
        super().__init__(message)
        self.expression = expression


def version() -> str:
    """The libhs this module is linked against (part of the database cache key)."""
    return hs_version().decode("ascii", "replace")


cdef class Database:
    """A stream-mode database owned by Debian's libhs."""
    cdef hs_database_t *db

    def __dealloc__(self):
        if self.db != NULL:
            hs_free_database(self.db)
            self.db = NULL
            dlp_forget_databases()

    def serialize(self) -> bytes:
        cdef char *out = NULL
        cdef size_t n = 0
        if hs_serialize_database(self.db, &out, &n) != HS_SUCCESS:
            raise CoreError("hs_serialize_database failed")
        try:
            return PyBytes_FromStringAndSize(out, n)
        finally:
            free(out)


cdef Database _compile_multi(list expressions, list flags, list ids, unsigned int mode, unsigned int extra):
    """``hs_compile_multi`` of ``expressions`` in ``mode``, ``extra`` or-ed into every flag; raises
    CoreError naming the failing expression."""
    cdef unsigned int n = len(expressions)
    cdef const char **ex = <const char **>malloc(n * sizeof(char *) + 1)
    cdef unsigned int *fl = <unsigned int *>malloc(n * sizeof(unsigned int) + 1)
    cdef unsigned int *idv = <unsigned int *>malloc(n * sizeof(unsigned int) + 1)
    cdef hs_compile_error_t *err = NULL
    cdef Database d = Database()
    cdef unsigned int k
    cdef int rc
    keep = [bytes(x) + b"" for x in expressions]
    try:
        if ex == NULL or fl == NULL or idv == NULL:
            raise MemoryError()
        for k in range(n):
            ex[k] = PyBytes_AS_STRING(keep[k])
            fl[k] = <unsigned int>flags[k] | extra
            idv[k] = ids[k]
        rc = hs_compile_multi(ex, fl, idv, n, mode, NULL, &d.db, &err)
        if rc != HS_SUCCESS:
            msg = err.message.decode("utf-8", "replace") if err != NULL and err.message != NULL else "compile error"
            at = err.expression if err != NULL else -1
            if err != NULL:
                hs_free_compile_error(err)
            d.db = NULL
            raise CoreError(msg, at)
        return d
    finally:
        free(ex)
        free(fl)
        free(idv)


def compile_stream(list expressions, list flags, list ids) -> Database:
    """``hs_compile_multi`` in stream mode; raises CoreError naming the failing expression."""
    return _compile_multi(expressions, flags, ids, HS_MODE_STREAM, 0)


def compile_som(list expressions, list flags, list ids, bint som=True) -> Database:
    """``hs_compile_multi`` in block mode with HS_FLAG_SOM_LEFTMOST on every expression (the value
    regexes that find where a variable-width value starts: see :func:`som_start`)."""
    return _compile_multi(expressions, flags, ids, HS_MODE_BLOCK, HS_FLAG_SOM_LEFTMOST if som else 0)


_SOM_DBS = {}                              # (expression, flags, som) -> Database or None: engines share them


def _som_db(bytes expr, unsigned int flags, bint som):
    """A one-expression block-mode database (SOM_LEFTMOST with ``som``), compiled once per process;
    None where libhs refuses it (the pattern then stays with ``re``). Databases are immutable."""
    key = (expr, flags, som)
    if key not in _SOM_DBS:
        try:
            _SOM_DBS[key] = compile_som([expr], [flags], [0], som)
        except CoreError:
            _SOM_DBS[key] = None
    return _SOM_DBS[key]


ctypedef struct SomAt:
    unsigned int want
    unsigned long long n
    long long start


cdef int on_som(unsigned int id, unsigned long long frm, unsigned long long to, unsigned int flags,
                void *ctx) noexcept nogil:
    cdef SomAt *a = <SomAt *>ctx
    if id == a.want and to == a.n:
        a.start = <long long>frm
        return 1                          # the last end there is: nothing more to learn
    return 0


cdef inline bint is_word(unsigned char c) noexcept nogil:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95


cdef Py_ssize_t som_start(Info info, int t, const char *p, Py_ssize_t n, bint after_blank) noexcept:
    """Leftmost start (offset in ``p``) of a match of value regex ``t`` ending exactly at ``n``, or
    -1. libhs sees no byte before ``p``: the caller starts ``p`` after a non-word byte, or one byte
    early (a match cannot be wider than its pattern's maxw, so none starts there but in error).
    ``after_blank``: ``p`` starts where ``re`` would search from (first try a match from there).
    -2 when libhs fails (the caller then asks ``re``)."""
    cdef SomAt a
    cdef int rc
    a.want = 0
    a.n = <unsigned long long>n
    a.start = -1
    rc = som_scratch_for(<void *>info, info.somdb, 3 * info.nsom)
    if rc == HS_SUCCESS and after_blank and info.somdb[info.nsom + t] != NULL:
        # a value that starts where the search starts (a CSV field) needs no SOM: one anchored test
        rc = hs_scan(info.somdb[info.nsom + t], p, <unsigned int>n, 0, dlp_som_scratch, on_som, &a)
        if rc == HS_SCAN_TERMINATED:
            return 0
    if rc == HS_SUCCESS:
        rc = hs_scan(info.somdb[t], p, <unsigned int>n, 0, dlp_som_scratch, on_som, &a)
    if rc != HS_SUCCESS and rc != HS_SCAN_TERMINATED:
        return -2                         # libhs could not say (no scratch): re decides, as the reference
    return a.start


DEF MAX_TRIES = 6             # word starts tried one by one before one leftmost-start scan of the rest


cdef Py_ssize_t som_start_ws(Info info, int t, const char *b, Py_ssize_t lo, Py_ssize_t e) noexcept:
    """:func:`som_start` for a value regex whose every match starts with ``\\b`` (see
    :func:`_word_start`): the only possible starts are the word boundaries in ``[lo, e)`` (only word
    starts when the first byte is always a word byte), tried leftmost first with the anchored
    database (~0.1 us each), where one leftmost-start scan of the window costs 2-3 us on the name
    and place patterns, and libhs cannot give the email pattern one at all. A boundary after a word
    byte is tried with the database that takes that byte first (libhs sees no byte before the data).
    After MAX_TRIES misses, one leftmost-start scan from the next word start answers for the rest
    (or ``re``, without one). ``b`` is the whole buffer: the byte before a candidate is a real one,
    as ``re`` sees it. -1 none, -2 ask ``re``."""
    cdef SomAt a
    cdef int rc, tries = 0
    cdef Py_ssize_t p = lo
    cdef bint wb, wc, only_word = info.pws[t] == 1
    cdef const unsigned char *first = info.pfirst + 256 * t
    rc = som_scratch_for(<void *>info, info.somdb, 3 * info.nsom)
    if rc != HS_SUCCESS:
        return -2
    while p < e:
        wb = p > 0 and is_word(<unsigned char>b[p - 1])
        wc = is_word(<unsigned char>b[p])
        if ((wc and not wb) if only_word else wc != wb) and first[<unsigned char>b[p]]:
            a.want = 0
            a.start = -1
            if tries == MAX_TRIES:
                if wb or info.somdb[t] == NULL:
                    return -2                     # no leftmost-start scan fits here: re decides
                a.n = <unsigned long long>(e - p)
                rc = hs_scan(info.somdb[t], b + p, <unsigned int>(e - p), 0, dlp_som_scratch, on_som, &a)
                if rc != HS_SUCCESS and rc != HS_SCAN_TERMINATED:
                    return -2
                return a.start + p if a.start >= 0 else -1
            if wb:
                a.n = <unsigned long long>(e - p + 1)
                rc = hs_scan(info.somdb[2 * info.nsom + t], b + p - 1, <unsigned int>(e - p + 1), 0,
                             dlp_som_scratch, on_som, &a)
            else:
                a.n = <unsigned long long>(e - p)
                rc = hs_scan(info.somdb[info.nsom + t], b + p, <unsigned int>(e - p), 0, dlp_som_scratch, on_som, &a)
            if rc == HS_SCAN_TERMINATED:
                return p
            if rc != HS_SUCCESS:
                return -2
            tries += 1
        p += 1
    return -1


cdef int _strategy = 0          # tests: 0 adaptive, 1 word starts only, 2 window scan only

# The pack's email value regex (signatures/contact.yaml) as the engine compiles it. Its start has a
# closed form (email_start); any other spelling keeps the generic paths.
EMAIL_VALUE_RX = (rb"(?:\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,4}"
                  rb"\.[A-Za-z]{2,18})\Z")


cdef inline bint _email_local(unsigned char c) noexcept nogil:
    return is_word(c) or c == 46 or c == 37 or c == 43 or c == 45


cdef inline bint _email_label(unsigned char c) noexcept nogil:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 45


# The pack's city/state/ZIP value regex (signatures/address.yaml) as the engine compiles it, and its
# states: its start has a closed form too (place_start).
PLACE_VALUE_RX = (rb"(?:\b(?:[A-Z][a-z]{1,20}|[A-Z]{2,20})(?: (?:[A-Z][a-z]{1,20}|[A-Z]{2,20})){0,2}"
                  rb"(?:, ?|,? |\t)(?:AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|"
                  rb"MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY)"
                  rb"(?:, ?| |\t)\d{5}\b)\Z")
cdef unsigned char _STATE[26 * 26]
for _st in PLACE_VALUE_RX.split(b"(?:AL|")[1].split(b")")[0].split(b"|") + [b"AL"]:
    _STATE[(_st[0] - 65) * 26 + _st[1] - 65] = 1


cdef inline bint _upper(unsigned char c) noexcept nogil:
    return 65 <= c <= 90


cdef inline bint _lower(unsigned char c) noexcept nogil:
    return 97 <= c <= 122


cdef inline Py_ssize_t _before_sep(const char *b, Py_ssize_t x) noexcept nogil:
    """End of what comes before a ``, ?|,? |\\t`` separator that ends at ``x`` (the parse is forced:
    neither side of it may end or start with one of its bytes), or -1."""
    if x < 1:
        return -1
    if b[x - 1] == 32:
        return x - 2 if x >= 2 and b[x - 2] == 44 else x - 1
    if b[x - 1] == 44 or b[x - 1] == 9:
        return x - 1
    return -1


cdef Py_ssize_t place_start(const char *b, Py_ssize_t lo, Py_ssize_t e) noexcept nogil:
    """Leftmost ``s >= lo`` where PLACE_VALUE_RX matches ``b[s:e]``, or -1, read backwards: five
    digits, a separator, a state, a separator, then one to three city words, each a whole run of
    letters (a start needs a word boundary, a later word a space before it): the leftmost word that
    starts on a boundary at or after ``lo`` is the start. Replaces the window scan (2-3 us) or the
    anchored tries on every row of an address roster."""
    cdef Py_ssize_t d = e - 5, st, ce, ws, k, best = -1
    cdef int words = 0
    cdef unsigned char c
    if d < lo:
        return -1
    for k in range(d, e):
        if not 48 <= <unsigned char>b[k] <= 57:
            return -1
    st = _before_sep(b, d)
    if st < 2 or not _upper(<unsigned char>b[st - 2]) or not _upper(<unsigned char>b[st - 1]) \
            or not _STATE[(<unsigned char>b[st - 2] - 65) * 26 + <unsigned char>b[st - 1] - 65]:
        return -1
    st -= 2
    ce = _before_sep(b, st)
    while ce > lo and words < 3:
        ws = ce
        while ws > 0 and ce - ws <= 21 and (_upper(<unsigned char>b[ws - 1]) or _lower(<unsigned char>b[ws - 1])):
            ws -= 1
        if ws < lo or ce - ws < 2 or ce - ws > 21 or not _upper(<unsigned char>b[ws]):
            break
        if _upper(<unsigned char>b[ws + 1]):             # [A-Z]{2,20}
            if ce - ws > 20:
                break
            for k in range(ws + 2, ce):
                if not _upper(<unsigned char>b[k]):
                    return best
        else:                                          # [A-Z][a-z]{1,20}
            for k in range(ws + 1, ce):
                if not _lower(<unsigned char>b[k]):
                    return best
        words += 1
        if ws == 0 or not is_word(<unsigned char>b[ws - 1]):
            best = ws
        if ws < 1 or b[ws - 1] != 32:
            break
        ce = ws - 1
    return best


# The pack's street-address value regex (signatures/person.yaml), in closed form too (street_start).
STREET_SUFFIXES = (b"Street St Avenue Ave Road Rd Boulevard Blvd Drive Dr Lane Ln Court Ct Way Place Pl Circle Cir "
                   b"Terrace Ter Parkway Pkwy Highway Hwy Trail Trl STREET ST AVENUE AVE ROAD RD BOULEVARD BLVD "
                   b"DRIVE DR LANE LN COURT CT WAY PLACE PL CIRCLE CIR TERRACE TER PARKWAY PKWY HIGHWAY HWY TRAIL "
                   b"TRL").split()
STREET_VALUE_RX = (rb"(?:\b\d{1,6} (?:[NSEW]\.? |North |South |East |West |NORTH |SOUTH |EAST |WEST )?"
                   rb"(?:[A-Z][a-z]{1,20} |[A-Z]{2,20} |\d{1,3}(?:st|nd|rd|th|ST|ND|RD|TH) ){1,3}(?:"
                   + b"|".join(STREET_SUFFIXES) + rb")\b)\Z")
# suffixes and directions of up to 8 bytes as their zero-padded uint64 (the two 9-byte suffixes apart)
cdef uint64_t _SFX_TAB[128]            # the suffix keys by their multiplied top 7 bits (0 = empty)
cdef uint64_t _DIR_KEYS[16]
cdef int _NSFX = 0, _NDIR = 0


cdef int _street_keys() except -1:
    global _NSFX, _NDIR
    cdef uint64_t key
    cdef bytes w
    cdef size_t j
    for w in STREET_SUFFIXES:
        if len(w) <= 8:
            key = 0
            memcpy(&key, PyBytes_AS_STRING(w), len(w))
            _NSFX += 1
            j = (key * 0x9E3779B97F4A7C15ULL) >> 57
            while _SFX_TAB[j] != 0:
                j = (j + 1) & 127
            _SFX_TAB[j] = key
    for w in b"N S E W N. S. E. W. North South East West NORTH SOUTH EAST WEST".split():
        key = 0
        memcpy(&key, PyBytes_AS_STRING(w), len(w))
        _DIR_KEYS[_NDIR] = key
        _NDIR += 1
    return 0


cdef inline bint _digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57


cdef inline bint _listed(const uint64_t *keys, int nkeys, const char *p, Py_ssize_t n) noexcept nogil:
    """``p[:n]`` (1 <= n <= 8) is one of ``keys`` (zero-padded words)."""
    cdef uint64_t key = 0
    cdef int k
    memcpy(&key, p, n)
    for k in range(nkeys):
        if keys[k] == key:
            return True
    return False


cdef inline bint _street_suffix(const char *p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t key = 0
    cdef size_t j
    if n == 9:
        return memcmp(p, b"Boulevard", 9) == 0 or memcmp(p, b"BOULEVARD", 9) == 0
    if not 1 <= n <= 8:
        return False
    memcpy(&key, p, n)
    j = (key * 0x9E3779B97F4A7C15ULL) >> 57
    while _SFX_TAB[j] != 0:
        if _SFX_TAB[j] == key:
            return True
        j = (j + 1) & 127
    return False


cdef inline bint _street_word(const char *b, Py_ssize_t a, Py_ssize_t z) noexcept nogil:
    """``b[a:z]`` is one of ``[A-Z][a-z]{1,20}``, ``[A-Z]{2,20}``, ``\\d{1,3}(?:st|nd|rd|th|ST|ND|RD|TH)``."""
    cdef Py_ssize_t n = z - a, k
    cdef unsigned char c, d
    if n < 2:
        return False
    if _upper(<unsigned char>b[a]):
        if _upper(<unsigned char>b[a + 1]):
            if n > 20:
                return False
            for k in range(a + 2, z):
                if not _upper(<unsigned char>b[k]):
                    return False
            return True
        if n > 21:
            return False
        for k in range(a + 1, z):
            if not _lower(<unsigned char>b[k]):
                return False
        return True
    if n < 3 or n > 5:
        return False
    for k in range(a, z - 2):
        if not _digit(<unsigned char>b[k]):
            return False
    c = <unsigned char>b[z - 2]
    d = <unsigned char>b[z - 1]
    return (c == b's' and d == b't') or (c == b'n' and d == b'd') or (c == b'r' and d == b'd') \
        or (c == b't' and d == b'h') or (c == b'S' and d == b'T') or (c == b'N' and d == b'D') \
        or (c == b'R' and d == b'D') or (c == b'T' and d == b'H')


cdef Py_ssize_t street_start(const char *b, Py_ssize_t lo, Py_ssize_t e) noexcept nogil:
    """Leftmost ``s >= lo`` where STREET_VALUE_RX matches ``b[s:e]``, or -1, read backwards. Each
    part of the regex is a space-free token followed by one space, so the tokens are the runs between
    single spaces: the suffix is the run after the last space, then one to three words, maybe a
    direction, then the number (the digits before a space, 1-6 of them, on a word boundary). A
    token that is a word and a direction (``North``) is tried both ways. Replaces libhs's anchored
    tries (~0.2 us a value, the costliest value start left on an address roster)."""
    cdef Py_ssize_t z = e - 1, a, d, best = -1
    cdef int i
    cdef bint allw = True, allw_prev = True, isw, isdir, prev_dir = False
    cdef unsigned char c
    while z >= lo and z >= e - 10 and b[z] != 32:
        z -= 1
    if z <= lo or b[z] != 32 or not _street_suffix(b + z + 1, e - z - 1):
        return -1
    # T_1, T_2, ...: the run before the space at z. allw: T_1..T_{i-1} are words (allw_prev: up to
    # T_{i-2}); prev_dir: T_{i-1} is a direction
    for i in range(1, 6):
        if i >= 2 and ((allw and i - 1 <= 3) or (prev_dir and allw_prev and 1 <= i - 2 <= 3)):
            d = z
            while d > 0 and z - d <= 6 and _digit(<unsigned char>b[d - 1]):
                d -= 1
            if 1 <= z - d <= 6 and d >= lo and (d == 0 or not is_word(<unsigned char>b[d - 1])):
                best = d
        a = z
        while a > 0 and z - a <= 21 and b[a - 1] != 32:
            a -= 1
        if a <= lo or b[a - 1] != 32:
            break
        isw = _street_word(b, a, z)
        c = <unsigned char>b[a]
        isdir = 1 <= z - a <= 5 and (c == b'N' or c == b'S' or c == b'E' or c == b'W') \
            and _listed(_DIR_KEYS, _NDIR, b + a, z - a)
        if not ((isw and allw and i <= 3) or (isdir and allw and 1 <= i - 1 <= 3)):
            break
        allw_prev = allw
        allw = allw and isw
        prev_dir = isdir
        z = a - 1
    return best


_street_keys()


# The pack's four person-name value regexes (signatures/person.yaml), in closed form too (name_start).
NAME_VALUE_RX = (
    rb"(?:\b(?P<first>[A-Z]{2,15}) (?:[A-Z]\.? )?[A-Z][A-Z'-]{1,19})\Z",        # 3: JOHN Q SMITH
    rb"(?:\b(?P<first>[A-Z][a-z]{1,14}) (?:[A-Z]\.? )?[A-Z][a-z'-]{1,19})\Z",   # 4: John Q. Smith
    rb"(?:\b(?P<last>[A-Z][A-Z'-]{1,19})[,\t] ?[A-Z]{2,15})\Z",                 # 5: SMITH, JOHN
    rb"(?:\b(?P<last>[A-Z][a-z'-]{1,19}), [A-Z][a-z]{1,14})\Z",                 # 6: Smith, John
)


cdef inline bint _uq(unsigned char c) noexcept nogil:      # [A-Z'-]
    return 65 <= c <= 90 or c == 39 or c == 45


cdef inline bint _lq(unsigned char c) noexcept nogil:      # [a-z'-]
    return 97 <= c <= 122 or c == 39 or c == 45


cdef inline bint _boundary(const char *b, Py_ssize_t s) noexcept nogil:
    """``\\b`` before a word byte at ``s`` (re sees the real byte before its search start)."""
    return s == 0 or not is_word(<unsigned char>b[s - 1])


cdef Py_ssize_t name_start(int kind, const char *b, Py_ssize_t lo, Py_ssize_t e) noexcept nogil:
    """Leftmost ``s >= lo`` where NAME_VALUE_RX[kind - 3] matches ``b[s:e]``, or -1, read backwards.
    Each part is a whole run of its class (the byte before it is a separator or fails ``\\b``), and
    the optional middle initial is told by the byte before the last name's space; only the
    upper-case "LAST, FIRST" shape has several starts to choose from (inside ``O'NEIL``)."""
    cdef Py_ssize_t r, ls, fe, f, le, x
    cdef bint up = kind == 3 or kind == 5
    if kind <= 4:
        r = e                                   # the last name: a run of [A-Z'-] / [a-z'-] up to e
        if up:
            while r > 0 and e - r < 20 and _uq(<unsigned char>b[r - 1]):
                r -= 1
            if r > 0 and _uq(<unsigned char>b[r - 1]):
                return -1
            ls = r
            if e - ls < 2:
                return -1
        else:
            while r > 0 and e - r < 19 and _lq(<unsigned char>b[r - 1]):
                r -= 1
            if r > 0 and _lq(<unsigned char>b[r - 1]):
                return -1
            if e - r < 1:
                return -1
            ls = r - 1
        if ls < 2 or not _upper(<unsigned char>b[ls]) or b[ls - 1] != 32:
            return -1
        x = <unsigned char>b[ls - 2]
        if x == 46:                             # "Q. "
            if ls < 4 or not _upper(<unsigned char>b[ls - 3]) or b[ls - 4] != 32:
                return -1
            fe = ls - 4
        elif _upper(<unsigned char>x) and (not up or (ls >= 3 and b[ls - 3] == 32)):
            if ls < 3 or b[ls - 3] != 32:       # "Q "
                return -1
            fe = ls - 3
        elif (up and _upper(<unsigned char>x)) or (not up and _lower(<unsigned char>x)):
            fe = ls - 1                         # no middle initial
        else:
            return -1
        f = fe                                  # the first name
        if up:
            while f > 0 and fe - f < 15 and _upper(<unsigned char>b[f - 1]):
                f -= 1
            if (f > 0 and _upper(<unsigned char>b[f - 1])) or fe - f < 2:
                return -1
        else:
            while f > 0 and fe - f < 14 and _lower(<unsigned char>b[f - 1]):
                f -= 1
            if (f > 0 and _lower(<unsigned char>b[f - 1])) or fe - f < 1:
                return -1
            f -= 1
            if f < 0 or not _upper(<unsigned char>b[f]):
                return -1
        return f if f >= lo and _boundary(b, f) else -1
    f = e                                       # the first name after the comma
    if up:
        while f > 0 and e - f < 15 and _upper(<unsigned char>b[f - 1]):
            f -= 1
        if (f > 0 and _upper(<unsigned char>b[f - 1])) or e - f < 2 or f < 1:
            return -1
        if b[f - 1] == 32:
            le = f - 2
            if le < 0 or (b[le] != 44 and b[le] != 9):
                return -1
        elif b[f - 1] == 44 or b[f - 1] == 9:
            le = f - 1
        else:
            return -1
        r = le                                  # the last name: [A-Z] then [A-Z'-], 2-20 bytes
        while r > 0 and le - r < 20 and _uq(<unsigned char>b[r - 1]):
            r -= 1
        if r < lo:
            r = lo
        for x in range(r, le - 1):
            if _upper(<unsigned char>b[x]) and _boundary(b, x):
                return x
        return -1
    while f > 0 and e - f < 14 and _lower(<unsigned char>b[f - 1]):
        f -= 1
    if (f > 0 and _lower(<unsigned char>b[f - 1])) or e - f < 1:
        return -1
    f -= 1
    if f < 3 or not _upper(<unsigned char>b[f]) or b[f - 1] != 32 or b[f - 2] != 44:
        return -1
    le = f - 2
    r = le
    while r > 0 and le - r < 19 and _lq(<unsigned char>b[r - 1]):
        r -= 1
    if (r > 0 and _lq(<unsigned char>b[r - 1])) or le - r < 1:
        return -1
    r -= 1
    if r < lo or not _upper(<unsigned char>b[r]) or not _boundary(b, r):
        return -1
    return r


cdef Py_ssize_t email_start(const char *b, Py_ssize_t lo, Py_ssize_t e) noexcept nogil:
    """Leftmost ``s >= lo`` where EMAIL_VALUE_RX matches ``b[s:e]`` (what ``rx.search(buf, lo, e)``
    starts at), or -1, with no libhs call: no class of the regex holds ``@``, so a match holds
    exactly one, the last ``@`` of ``[lo, e)``; the domain after it either matches (labels split on
    dots, a forced parse) or no start does; the start is then the first word boundary of the run
    of local-part bytes (at most 64) before the ``@``. Per email this replaces several anchored
    libhs tries (the pattern has no leftmost-start database: "Pattern is too large")."""
    cdef const char *p
    cdef Py_ssize_t at, q, ls, r, s, labels = 0
    cdef unsigned char c
    if e <= lo:
        return -1
    p = <const char *>dlp_memrchr(b + lo, 64, e - lo)
    if p == NULL:
        return -1
    at = p - b
    q = at + 1
    while True:                                # the domain: 1-5 labels of 1-63, then a TLD of 2-18 letters
        ls = q
        while q < e and b[q] != 46:
            if not _email_label(<unsigned char>b[q]):
                return -1
            q += 1
        if q == e:
            if labels < 1 or q - ls < 2 or q - ls > 18:
                return -1
            for r in range(ls, q):
                c = <unsigned char>b[r]
                if not ((65 <= c <= 90) or (97 <= c <= 122)):
                    return -1
            break
        if q - ls < 1 or q - ls > 63 or labels == 5:
            return -1
        labels += 1
        q += 1                                 # past the dot
    r = at
    while r > lo and r > at - 64 and _email_local(<unsigned char>b[r - 1]):
        r -= 1
    for s in range(r, at):
        if (s > 0 and is_word(<unsigned char>b[s - 1])) != is_word(<unsigned char>b[s]):
            return s
    return -1


def _set_start_strategy(int mode) -> None:
    """For tests: force how :func:`value_start` / the loop find a word-start regex's start."""
    global _strategy
    _strategy = mode


cdef Py_ssize_t window_start(Info info, int t, const char *b, Py_ssize_t lo, Py_ssize_t e, int64_t maxw) noexcept:
    """The window scan (leftmost-start database over ``[lo, e)``, anchored first after a blank)."""
    cdef Py_ssize_t s = -2
    if lo == 0 or not is_word(<unsigned char>b[lo - 1]):
        s = som_start(info, t, b + lo, e - lo, True)      # none: re finds none either
        if s >= 0:
            s += lo
    elif lo == e - maxw:                          # let libhs see the byte before lo
        s = som_start(info, t, b + lo - 1, e - lo + 1, False)
        if s >= 0:
            s += lo - 1
            if s < lo:
                s = -2                            # wider than maxw: ask re
    return s


cdef Py_ssize_t value_start_c(Info info, int t, const char *b, Py_ssize_t lo, Py_ssize_t e, int64_t maxw) noexcept:
    """Where the value of regex ``t`` ending at ``e`` starts (searched from ``lo``): -1 none, -2 ask
    ``re``. A word-start regex has two exact ways (the same answer): its word starts one by one, or
    the window scan; which is cheaper depends on the pattern and the data (a failed anchored try
    costs 0.1-0.8 us, a window scan 0.2-3 us), so every 16th call is timed, alternating the two, and
    the others take the one with the lower moving average. Only the cost is adaptive, never the
    answer (tests/test_core_som.py holds both ways to ``re``)."""
    cdef unsigned int n
    cdef bint ws
    cdef double t0, dt
    cdef Py_ssize_t s
    if info.pemail[t] and _strategy == 0:
        if info.pemail[t] == 1:
            return email_start(b, lo, e)
        if info.pemail[t] == 7:
            return street_start(b, lo, e)
        return place_start(b, lo, e) if info.pemail[t] == 2 else name_start(info.pemail[t], b, lo, e)
    if not info.pws[t] or (_strategy == 2 and info.somdb[t] != NULL):
        return window_start(info, t, b, lo, e, maxw) if info.somdb[t] != NULL else -2
    if _strategy == 1 or info.somdb[t] == NULL:
        return som_start_ws(info, t, b, lo, e)
    n = info.scount[t]
    info.scount[t] = n + 1
    if n & 15:
        if info.cost_ws[t] <= info.cost_win[t]:
            return som_start_ws(info, t, b, lo, e)
        return window_start(info, t, b, lo, e, maxw)
    ws = not (n >> 4) & 1
    t0 = dlp_ticks()
    s = som_start_ws(info, t, b, lo, e) if ws else window_start(info, t, b, lo, e, maxw)
    dt = dlp_ticks() - t0
    if ws:
        info.cost_ws[t] = dt if info.cost_ws[t] == 0 else info.cost_ws[t] + (dt - info.cost_ws[t]) / 8
    else:
        info.cost_win[t] = dt if info.cost_win[t] == 0 else info.cost_win[t] + (dt - info.cost_win[t]) / 8
    return s


_WORD = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


def _first_is_word(items) -> bool:
    """Does every match of this parsed sequence begin with a word byte?"""
    from re import _constants as C
    if not items:
        return False
    op, av = items[0]
    if op is C.LITERAL:
        return av in _WORD
    if op is C.IN:
        for o, x in av:
            if o is C.LITERAL:
                if x not in _WORD:
                    return False
            elif o is C.RANGE:
                if not all(c in _WORD for c in range(x[0], x[1] + 1)):
                    return False
            elif o is C.CATEGORY:
                if x not in (C.CATEGORY_DIGIT, C.CATEGORY_WORD):
                    return False
            else:
                return False
        return True
    if op is C.MAX_REPEAT or op is C.MIN_REPEAT:
        return av[0] >= 1 and _first_is_word(list(av[2]))
    if op is C.SUBPATTERN:
        return _first_is_word(list(av[3]))
    if op is C.BRANCH:
        return all(_first_is_word(list(br)) for br in av[1])
    return False


def _byte_set(op, av, C):
    """The bytes one parsed element can consume, as a set, or None when not a plain byte class."""
    out = set()
    if op is C.LITERAL:
        return {av}
    if op is C.IN:
        for o, x in av:
            if o is C.LITERAL:
                out.add(x)
            elif o is C.RANGE:
                out.update(range(x[0], x[1] + 1))
            elif o is C.CATEGORY and x is C.CATEGORY_DIGIT:
                out.update(b"0123456789")
            elif o is C.CATEGORY and x is C.CATEGORY_WORD:
                out.update(_WORD)
            else:
                return None                   # NEGATE, other categories: not handled
        return out
    return None


def _lead_group(rx, str name):
    """For a ``require`` on group ``name`` of ``rx``: a 256-byte table of the bytes the group can
    consume, when the group is the first element after the leading ``\\b`` and made only of byte
    classes, and the element after it must consume a byte the group cannot. Then, in a match found
    from its start, the group runs exactly to the first byte outside the table (no ``re`` needed
    to find it). None otherwise (the loop asks ``re``, as before)."""
    from re import _constants as C, _parser as P
    try:
        items = list(P.parse(rx.pattern, rx.flags))
        gid = rx.groupindex[name]
    except Exception:                    # noqa: BLE001 - not understood: ask re
        return None
    while (items and items[0][0] is C.SUBPATTERN and items[0][1][0] is None
           and items[1:] in ([], [(C.AT, C.AT_END_STRING)])):
        items = list(items[0][1][3]) + items[1:]
    if len(items) < 3 or items[0] != (C.AT, C.AT_BOUNDARY) or items[1][0] is not C.SUBPATTERN:
        return None
    g, add, dele, body = items[1][1]
    if g != gid or add or dele:
        return None
    member = set()
    for op, av in body:
        if op is C.MAX_REPEAT or op is C.MIN_REPEAT:
            sub = list(av[2])
            if len(sub) != 1:
                return None
            op, av = sub[0]
        got = _byte_set(op, av, C)
        if got is None:
            return None
        member |= got
    op, av = items[2]
    if op is C.MAX_REPEAT or op is C.MIN_REPEAT:
        sub = list(av[2])
        if av[0] < 1 or len(sub) != 1:
            return None
        op, av = sub[0]
    follow = _byte_set(op, av, C)
    if follow is None:
        return None
    if rx.flags & 2:                     # IGNORECASE (ASCII bytes): both cases of every letter
        for st in (member, follow):
            st |= {c ^ 32 for c in st if 65 <= (c & ~32) <= 90}
    if member & follow:
        return None
    return bytes(1 if c in member else 0 for c in range(256))


def _first_set(items):
    """The bytes a match of this parsed sequence can begin with, or None when not worked out."""
    from re import _constants as C
    if not items:
        return None
    op, av = items[0]
    if op is C.LITERAL or op is C.IN:
        return _byte_set(op, av, C)
    if op is C.MAX_REPEAT or op is C.MIN_REPEAT:
        return _first_set(list(av[2])) if av[0] >= 1 else None
    if op is C.SUBPATTERN:
        return _first_set(list(av[3])) if not av[1] and not av[2] else None
    if op is C.BRANCH:
        out = set()
        for br in av[1]:
            got = _first_set(list(br))
            if got is None:
                return None
            out |= got
        return out
    return None


def _first_bytes(rx) -> bytes:
    """A 256-byte table: may a match of ``rx`` (after its leading ``\\b``) begin with this byte?
    All ones when not worked out. Word starts and boundaries whose byte cannot begin a match are
    not tried (:func:`som_start_ws`)."""
    from re import _constants as C, _parser as P
    try:
        items = list(P.parse(rx.pattern, rx.flags))
    except Exception:                    # noqa: BLE001 - not understood: every byte may begin one
        return b"\x01" * 256
    while (items and items[0][0] is C.SUBPATTERN and items[0][1][0] is None
           and items[1:] in ([], [(C.AT, C.AT_END_STRING)])):
        items = list(items[0][1][3]) + items[1:]
    first = _first_set(items[1:]) if items[:1] == [(C.AT, C.AT_BOUNDARY)] else None
    if first is None:
        return b"\x01" * 256
    if rx.flags & 2:                     # IGNORECASE: both cases of every letter
        first |= {c ^ 32 for c in first if 65 <= (c & ~32) <= 90}
    return bytes(1 if c in first else 0 for c in range(256))


def _word_start(rx) -> int:
    """Does every match of ``rx`` (``(?:...)\\Z``) start with ``\\b``? 1: and then a word byte (its
    starts are word starts), 2: and then any byte (its starts are word boundaries), 0: neither
    (:func:`som_start_ws`). Parsed with ``re``'s own parser; a shape not recognised answers 0."""
    from re import _constants as C, _parser as P
    try:
        items = list(P.parse(rx.pattern, rx.flags))
    except Exception:                    # noqa: BLE001 - not understood: not eligible
        return False
    while (items and items[0][0] is C.SUBPATTERN and items[0][1][0] is None
           and items[1:] in ([], [(C.AT, C.AT_END_STRING)])):
        items = list(items[0][1][3]) + items[1:]
    if items[:1] != [(C.AT, C.AT_BOUNDARY)]:
        return 0
    return 1 if _first_is_word(items[1:]) else 2


def load_stream(bytes blob not None) -> Database:
    """A database serialized by this same libhs; CoreError when it does not load."""
    cdef Database d = Database()
    if hs_deserialize_database(PyBytes_AS_STRING(blob), PyBytes_GET_SIZE(blob), &d.db) != HS_SUCCESS:
        d.db = NULL
        raise CoreError("hs_deserialize_database failed")
    return d


def live_scratches() -> int:
    """Thread scratches allocated and not yet freed (a thread's is freed when the thread exits)."""
    return dlp_live_scratches()


def _scratch_in_native_thread(Database db not None) -> int:
    """For tests: size a scratch for ``db`` in a native thread that exits; libhs's return code."""
    cdef int rc
    with nogil:
        rc = dlp_scratch_in_thread(db.db)
    return rc


cdef size_t _max_call = 1 << 30


def _set_max_call(size_t n) -> None:
    """For tests: the largest slice of a chunk handed to one hs_scan_stream call (1 GiB)."""
    global _max_call
    _max_call = n if n > 0 else 1 << 30


# test hook: the next close() of a PartScan fails with this libhs code, as if hs_close_stream had
_close_fault = 0


def _fail_next_close(int rc) -> None:
    """For tests: make the next ``PartScan.close`` fail with libhs code ``rc`` (before any match)."""
    global _close_fault
    _close_fault = rc


# -- hits: a growable C array filled by the C callback ---------------------------------------------
DEF HITS_FIRST = 256           # a part's first hits array (4 KiB): what a chunk of web text needs; dense
                               # data doubles it to its size in a few steps (kept up to HITS_KEEP)


ctypedef struct Hit:
    int64_t end
    unsigned int id

ctypedef struct Hits:
    Hit *a
    size_t n
    size_t cap
    int oom

ctypedef struct Sink:            # one per stream: the shared array, and the offset its ends are shifted by
    Hits *hits
    int64_t base


cdef int on_hit(unsigned int id, unsigned long long frm, unsigned long long to, unsigned int flags,
                void *ctx) noexcept nogil:
    cdef Sink *s = <Sink *>ctx
    cdef Hits *h = s.hits
    cdef Hit *grown
    cdef size_t cap
    if h.n == h.cap:
        cap = h.cap * 2 if h.cap else HITS_FIRST
        grown = <Hit *>realloc(h.a, cap * sizeof(Hit))
        if grown == NULL:
            h.oom = 1
            return 1                    # stop the scan; the caller raises MemoryError
        h.a = grown
        h.cap = cap
    h.a[h.n].id = id
    h.a[h.n].end = <int64_t>to + s.base
    h.n += 1
    return 0


cdef inline void merge_runs(const Hit *src, Hit *dst, size_t lo, size_t mid, size_t hi) noexcept nogil:
    """Merge the sorted runs src[lo:mid] and src[mid:hi] into dst[lo:hi], stable by end."""
    cdef size_t i = lo, j = mid, k = lo
    while i < mid and j < hi:
        if src[j].end < src[i].end:
            dst[k] = src[j]
            j += 1
        else:
            dst[k] = src[i]
            i += 1
        k += 1
    while i < mid:
        dst[k] = src[i]
        i += 1
        k += 1
    while j < hi:
        dst[k] = src[j]
        j += 1
        k += 1


cdef void merge_sort(Hit *a, Hit *tmp, size_t n) noexcept nogil:
    """Stable merge sort by end (the hits are a few sorted runs: main, then gated). Two runs, the
    usual case, are one linear merge; anything else the bottom-up sort (log2 n passes)."""
    cdef size_t width = 1, lo, mid, hi, i, runs = 1, cut = 0
    for i in range(1, n):
        if a[i].end < a[i - 1].end:
            runs += 1
            cut = i
            if runs > 2:
                break
    if runs == 1:
        return
    if runs == 2:
        merge_runs(a, tmp, 0, cut, n)
        memcpy(a, tmp, n * sizeof(Hit))
        return
    cdef Hit *src = a
    cdef Hit *dst = tmp
    cdef Hit *sw
    while width < n:
        lo = 0
        while lo < n:
            mid = lo + width if lo + width < n else n
            hi = lo + 2 * width if lo + 2 * width < n else n
            merge_runs(src, dst, lo, mid, hi)
            lo = hi
        sw = src
        src = dst
        dst = sw
        width *= 2
    if src != a:
        memcpy(a, src, n * sizeof(Hit))


DEF HITS_KEEP = 1 << 16        # hits (16 bytes each) an idle PartScan keeps room for between chunks


@cython.no_gc_clear                # a collection never drops main/gated before the streams are freed
cdef class PartScan:
    """The Hyperscan side of one part of one exchange: the main stream, the gated one once its gate
    opens, the hits of the last call, and the per-part state the loop keeps in C (hotword positions,
    signatures a header names). One call at a time; successive calls may come from different threads."""
    cdef Database main, gated
    cdef hs_stream_t *st
    cdef hs_stream_t *gst
    cdef Hits hits
    cdef Sink msink, gsink
    cdef int64_t *last_hot
    cdef char *header
    cdef unsigned char *colctx   # COLS x nsig: the header names signature si for column c (col_context)
    cdef int nsig
    cdef int busy                # a call is in progress (maybe with the GIL released): refuse another

    def __cinit__(self, Database main not None, Database gated, int nsig):
        self.main = main
        self.gated = gated
        cdef int k
        self.nsig = nsig
        self.msink.hits = &self.hits
        self.msink.base = 0
        self.gsink.hits = &self.hits
        self.last_hot = <int64_t *>malloc((nsig + 1) * sizeof(int64_t))
        self.header = <char *>malloc(nsig + 1)
        if self.last_hot == NULL or self.header == NULL:
            raise MemoryError()
        for k in range(nsig):
            self.last_hot[k] = -(1 << 60)
            self.header[k] = 0
        if hs_open_stream(main.db, 0, &self.st) != HS_SUCCESS:
            raise CoreError("hs_open_stream failed")

    def __dealloc__(self):
        if self.st != NULL:
            hs_close_stream(self.st, NULL, NULL, NULL)
        if self.gst != NULL:
            hs_close_stream(self.gst, NULL, NULL, NULL)
        free(self.hits.a)
        free(self.last_hot)
        free(self.header)
        free(self.colctx)

    cdef int _enter(self) except -1:
        """One call at a time: two threads in one stream (or one scanning while another closes or
        walks the hits) would corrupt libhs's stream state or the hits array; refuse instead."""
        if self.busy:
            raise CoreError("PartScan used by two calls at once")
        self.busy = 1
        return 0

    cdef int _run(self, hs_stream_t *st, hs_database_t *db, Sink *sink, const char *p, size_t n) except -1:
        cdef int rc
        cdef size_t k, most = _max_call
        if st == NULL:
            raise CoreError("stream closed")
        self._enter()
        with nogil:
            rc = scratch_for(db)
            # libhs takes an unsigned int length: a chunk of 4 GiB or more goes in slices (a stream's
            # matches do not depend on how its bytes are cut), not truncated to its length mod 2**32
            while rc == HS_SUCCESS and n > 0:
                k = n if n <= most else most
                rc = hs_scan_stream(st, p, <unsigned int>k, 0, dlp_tls_scratch, on_hit, sink)
                p += k
                n -= k
        self.busy = 0
        if self.hits.oom:
            self.hits.oom = 0
            raise MemoryError()
        if rc != HS_SUCCESS:
            raise CoreError(f"hs_scan_stream failed ({rc})")
        return 0

    def scan(self, bytes data not None) -> int:
        """Scan the next bytes of the part (GIL released); the hits replace the previous call's."""
        if self.busy:
            raise CoreError("PartScan used by two calls at once")
        self.hits.n = 0
        if self.hits.cap > HITS_KEEP:           # one dense chunk does not pin its peak for the part
            free(self.hits.a)
            self.hits.a = NULL
            self.hits.cap = 0
        self._run(self.st, self.main.db, &self.msink, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        return self.hits.n

    @property
    def gate_open(self) -> bool:
        return self.gst != NULL

    @property
    def nhits(self) -> int:
        """The hits of the last call (kept when close() raised: the ones reported before the error)."""
        return self.hits.n

    @property
    def capacity(self) -> int:
        return self.hits.cap

    def open_gate(self, int64_t base) -> None:
        if self.gated is None or self.gst != NULL or self.st == NULL or self.busy:
            raise CoreError("no gated database, or its stream is already open")
        if hs_open_stream(self.gated.db, 0, &self.gst) != HS_SUCCESS:
            raise CoreError("hs_open_stream failed")
        self.gsink.base = base

    def scan_gate(self, bytes data not None, Py_ssize_t offset=0) -> int:
        """Scan ``data[offset:]`` with the gated stream, appending to this call's hits."""
        offset = _clamp(offset, PyBytes_GET_SIZE(data))
        self._run(self.gst, self.gated.db, &self.gsink, PyBytes_AS_STRING(data) + offset,
                  PyBytes_GET_SIZE(data) - offset)
        return self.hits.n

    def any_of(self, const unsigned char[:] ids not None) -> bool:
        """Does any hit of this call have an id flagged in ``ids`` (the gate's opening ids)?"""
        cdef size_t k
        cdef unsigned int i
        for k in range(self.hits.n):
            i = self.hits.a[k].id
            if i < <unsigned int>ids.shape[0] and ids[i]:
                return True
        return False

    def sort(self) -> None:
        """Stable by end (as the reference's ``list.sort``): main hits first among equal ends."""
        cdef size_t n = self.hits.n
        cdef Hit *tmp
        if n < 2:
            return
        if self.busy:
            raise CoreError("PartScan used by two calls at once")
        tmp = <Hit *>malloc(n * sizeof(Hit))
        if tmp == NULL:
            raise MemoryError()
        with nogil:
            merge_sort(self.hits.a, tmp, n)
        free(tmp)

    def close(self) -> int:
        """End of the part: matches at end of data (main, then gated), streams freed (always).

        A libhs error raises CoreError after both streams are freed, with ``nhits`` the matches
        reported before it, as the reference's ``hs.Stream.close`` raises with its list filled so far;
        when the main stream fails, the gated one is freed unscanned (the reference never reaches it)."""
        global _close_fault
        cdef int rc = HS_SUCCESS
        cdef int fault = _close_fault
        _close_fault = 0
        self._enter()
        self.hits.n = 0
        with nogil:
            if self.st != NULL:
                rc = fault if fault else scratch_for(self.main.db)
                if rc == HS_SUCCESS:
                    rc = hs_close_stream(self.st, dlp_tls_scratch, on_hit, &self.msink)
                else:
                    hs_close_stream(self.st, NULL, NULL, NULL)
                self.st = NULL
            if self.gst != NULL:
                if rc == HS_SUCCESS:
                    rc = scratch_for(self.gated.db)
                    if rc == HS_SUCCESS:
                        rc = hs_close_stream(self.gst, dlp_tls_scratch, on_hit, &self.gsink)
                    else:
                        hs_close_stream(self.gst, NULL, NULL, NULL)
                else:
                    hs_close_stream(self.gst, NULL, NULL, NULL)
                self.gst = NULL
        self.busy = 0
        if self.hits.oom:
            self.hits.oom = 0
            raise MemoryError()
        if rc != HS_SUCCESS:
            raise CoreError(f"hs_close_stream failed ({rc})")
        return self.hits.n

    def hits_list(self) -> list:
        """The hits as the reference's list of ``(id, end)`` (for the structure view)."""
        self._enter()                          # building the list may run a collection, and other threads
        try:
            return [(self.hits.a[k].id, self.hits.a[k].end) for k in range(self.hits.n)]
        finally:
            self.busy = 0


# -- byte searches with Python's clamping -------------------------------------------------------------
cdef inline Py_ssize_t _clamp(Py_ssize_t x, Py_ssize_t n) noexcept nogil:
    return 0 if x < 0 else (n if x > n else x)


cdef inline Py_ssize_t rfind1(const char *b, Py_ssize_t n, char c, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """``buf.rfind(c, lo, hi)`` for non-negative bounds."""
    cdef const char *p
    lo = _clamp(lo, n)
    hi = _clamp(hi, n)
    if hi <= lo:
        return -1
    p = <const char *>dlp_memrchr(b + lo, c, hi - lo)
    return -1 if p == NULL else p - b


cdef inline Py_ssize_t after_blank(const char *b, Py_ssize_t n, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """``max(lo, buf.rfind(x, lo, hi) + 1 for x in b' \\n\\t')`` in one backward walk that stops at the
    first blank (a value is short; three memrchr calls read the whole window, 403 bytes for an
    email, wherever a tab never comes)."""
    cdef Py_ssize_t j = _clamp(hi, n) - 1, stop = _clamp(lo, n)
    cdef char c
    while j >= stop:
        c = b[j]
        if c == b' ' or c == b'\n' or c == b'\t':
            return j + 1 if j + 1 > lo else lo
        j -= 1
    return lo


cdef inline Py_ssize_t find1(const char *b, Py_ssize_t n, char c, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef const char *p
    lo = _clamp(lo, n)
    hi = _clamp(hi, n)
    if hi <= lo:
        return -1
    p = <const char *>memchr(b + lo, c, hi - lo)
    return -1 if p == NULL else p - b


cdef inline Py_ssize_t count_unquoted(const char *b, Py_ssize_t n, char c, Py_ssize_t lo,
                                     Py_ssize_t hi) noexcept nogil:
    """``-1 if buf.find(b'"', lo, hi) >= 0 else buf.count(c, lo, hi)`` for non-negative bounds."""
    lo = _clamp(lo, n)
    hi = _clamp(hi, n)
    return dlp_count_unquoted(b, lo, hi, c) if lo < hi else 0


cdef Py_ssize_t rfind_sub(const char *b, Py_ssize_t n, const char *t, Py_ssize_t tn, Py_ssize_t lo,
                          Py_ssize_t hi) noexcept nogil:
    """``buf.rfind(t, lo, hi)`` for a short ``t`` and non-negative bounds."""
    cdef Py_ssize_t k
    lo = _clamp(lo, n)
    hi = _clamp(hi, n)
    k = hi - tn
    while k >= lo:
        k = rfind1(b, n, t[0], lo, k + 1)
        if k < 0:
            return -1
        if memcmp(b + k, t, tn) == 0:
            return k
        k -= 1
    return -1


cdef Py_ssize_t json_record(const char *b, Py_ssize_t n, Py_ssize_t e, Py_ssize_t maxrec) noexcept nogil:
    """scanner._json_record in C."""
    cdef Py_ssize_t lo = e - maxrec if e > maxrec else 0
    cdef Py_ssize_t pos = e, j
    cdef char c
    while True:
        pos = rfind1(b, n, b'{', lo, pos)
        if pos < 0:
            return lo
        j = pos - 1
        while j >= lo and (b[j] == b' ' or b[j] == b'\t' or b[j] == b'\r' or b[j] == b'\n'):
            j -= 1
        if j < lo:
            return pos
        c = b[j]
        if c == b'[' or c == b',':
            return pos


cdef const char *HTML_TAGS[10]
cdef Py_ssize_t HTML_LENS[10]
_tags = (b"<tr", b"<TR", b"<li", b"<LI", b"<p>", b"<P>", b"<br", b"<BR", b"</div", b"</DIV")
for _k in range(10):
    HTML_TAGS[_k] = PyBytes_AS_STRING(_tags[_k])
    HTML_LENS[_k] = PyBytes_GET_SIZE(_tags[_k])


# -- validators: C twins of sensor.detect.validators ---------------------------------------------------
from sensor.detect import validators as _V

cdef object SSN_INVALID = _V._SSN_INVALID
cdef object TEST_CARDS = _V._TEST_CARDS

DEF MAXD = 32
# codes; PY = call the Python validator (no C twin: see PY_VALIDATORS)
TWINS = {"ssn": 1, "luhn": 2, "pan": 3, "aba": 4, "nanp": 5, "email": 6, "dob": 7}
# validators called through Python from the compiled loop, on purpose: ``iban`` is rare and its
# reference decodes text (exact by construction). ``dob`` has a C twin for the shapes a date match
# takes (digits and ``/ - . , space``) and asks the Python validator for anything else.
PY_VALIDATORS = frozenset({"iban"})
DEF V_PY = 99


cdef inline int ndigits(const unsigned char *v, Py_ssize_t n, unsigned char *d) noexcept nogil:
    """The digits of ``v`` into ``d`` (at most MAXD kept); the full count is returned."""
    cdef Py_ssize_t k
    cdef int m = 0
    for k in range(n):
        if 48 <= v[k] <= 57:
            if m < MAXD:
                d[m] = v[k]
            m += 1
    return m


cdef inline int distinct_at_least(const unsigned char *d, int n, int want) noexcept nogil:
    cdef int seen[10]
    cdef int k, c = 0
    for k in range(10):
        seen[k] = 0
    for k in range(n):
        if not seen[d[k] - 48]:
            seen[d[k] - 48] = 1
            c += 1
            if c >= want:
                return 1
    return 0


cdef int luhn_digits(const unsigned char *d, int n) noexcept nogil:
    cdef int total = 0, k, x
    if n < 12 or n > 19:
        return 0
    if in_list(_CARDS, _NCARDS, d, n):
        return 0
    if not distinct_at_least(d, n, 3):
        return 0
    for k in range(n):
        x = d[n - 1 - k] - 48
        if k & 1:
            x *= 2
            if x > 9:
                x -= 9
        total += x
    return total % 10 == 0


cdef inline int starts(const unsigned char *d, int n, const char *p) noexcept nogil:
    cdef int k = 0
    while p[k]:
        if k >= n or d[k] != <unsigned char>p[k]:
            return 0
        k += 1
    return 1


cdef inline int num(const unsigned char *d, int k) noexcept nogil:
    cdef int out = 0, j
    for j in range(k):
        out = out * 10 + d[j] - 48
    return out


cdef int pan_brand(const unsigned char *d, int n) noexcept nogil:
    """Some brand of validators._PAN_BRANDS has this prefix and this length."""
    cdef int p2 = num(d, 2) if n >= 2 else -1
    cdef int p3 = num(d, 3) if n >= 3 else -1
    cdef int p4 = num(d, 4) if n >= 4 else -1
    if starts(d, n, b"4") and (n == 13 or n == 16 or n == 19):
        return 1
    if n == 16 and ((51 <= p2 <= 55) or (2221 <= p4 <= 2720)):
        return 1
    if n == 15 and (p2 == 34 or p2 == 37):
        return 1
    if (n == 16 or n == 19) and (p4 == 6011 or p2 == 65 or (644 <= p3 <= 649)):
        return 1
    if (n == 16 or n == 19) and 3528 <= p4 <= 3589:
        return 1
    if (n == 14 or n == 16) and ((300 <= p3 <= 305) or p2 == 36 or p2 == 38):
        return 1
    if 12 <= n <= 19 and (p4 in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763)
                          or starts(d, n, b"676770") or starts(d, n, b"676774")):
        return 1
    if n == 16 and p4 == 5019:
        return 1
    if n == 15 and starts(d, n, b"1"):
        return 1
    return 0


# today (validators._today) as yyyymmdd, refreshed per process() call: one int, so that a walk on
# another thread never reads a year of one day with the month of the next (at midnight)
cdef int _today_ymd = 0


cdef time_t _today_at = 0


cdef int refresh_today() except -1:
    """Today's date, asked of Python at most once a second (date.today() costs ~20 us here)."""
    global _today_ymd, _today_at
    cdef time_t now = time(NULL)
    if now == _today_at:
        return 0
    _today_at = now
    t = _V._today()
    _today_ymd = t.year * 10000 + t.month * 100 + t.day
    return 0


cdef inline int _is_leap(int y) noexcept nogil:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


cdef int dob_c(const unsigned char *v, Py_ssize_t n) noexcept nogil:
    """validators.dob for values of digits and ``/ - . ,`` and spaces: 1/0, or -1 for "ask Python"
    (any other byte, or a number too long for the calendar's ints: the reference may raise there).
    The reference splits on those separators; one 8-digit part is YYYYMMDD, three parts are
    Y-M-D when the first has 4 digits, else M/D/Y; anything else is no date."""
    cdef int starts_[4]
    cdef int lens[4]
    cdef int np = 0, k, y, m, d, dim
    cdef Py_ssize_t j = 0, a
    cdef unsigned char c
    while j < n:
        c = v[j]
        if 48 <= c <= 57:
            a = j
            while j < n and 48 <= v[j] <= 57:
                j += 1
            if np < 4:
                starts_[np] = <int>a
                lens[np] = <int>(j - a)
            np += 1
        elif c == 47 or c == 45 or c == 46 or c == 44 or c == 32:
            j += 1
        else:
            return -1
    if np == 1 and lens[0] == 8:
        y = num(v + starts_[0], 4)
        m = num(v + starts_[0] + 4, 2)
        d = num(v + starts_[0] + 6, 2)
    elif np == 3:
        for k in range(3):
            if lens[k] > 9:
                return -1                # int() of it may overflow date(): the reference decides
        if lens[0] == 4:
            y = num(v + starts_[0], lens[0])
            m = num(v + starts_[1], lens[1])
            d = num(v + starts_[2], lens[2])
        else:
            m = num(v + starts_[0], lens[0])
            d = num(v + starts_[1], lens[1])
            y = num(v + starts_[2], lens[2])
    else:
        return 0
    if y < 1 or y > 9999 or m < 1 or m > 12 or d < 1:
        return 0
    if m == 2:
        dim = 29 if _is_leap(y) else 28
    elif m == 4 or m == 6 or m == 9 or m == 11:
        dim = 30
    else:
        dim = 31
    if d > dim:
        return 0
    cdef int today = _today_ymd
    if y * 10000 + m * 100 + d > today:
        return 0
    return today // 10000 - y <= 120


cdef int validate(int code, const unsigned char *v, Py_ssize_t n) except -1:
    """validate_c, and the Python validator where the C twin cannot say (a date of another shape)."""
    cdef int r = validate_c(code, v, n)
    if r < 0:
        return 1 if _V.dob(PyBytes_FromStringAndSize(<const char *>v, n)) else 0
    return r


cdef int validate_c(int code, const unsigned char *v, Py_ssize_t n) noexcept nogil:
    """The C twin of validator ``code``: 1 / 0, or -1 "ask Python" (validate does). Without the GIL:
    the per-match pass calls it for a whole chunk (the reference's sets are C tables, _SSN_BAD...)."""
    cdef unsigned char d[MAXD]
    cdef int m, x, s, k
    cdef const unsigned char *host
    cdef Py_ssize_t hn, at, rl
    if code == 1:                                   # ssn
        m = ndigits(v, n, d)
        if m != 9 or in_list(_SSN_BAD, _NSSN, d, 9):
            return 0
        if (d[0] == 48 and d[1] == 48 and d[2] == 48) or (d[0] == 54 and d[1] == 54 and d[2] == 54) or d[0] == 57:
            return 0
        if (d[3] == 48 and d[4] == 48) or (d[5] == 48 and d[6] == 48 and d[7] == 48 and d[8] == 48):
            return 0
        return distinct_at_least(d, 9, 2)
    if code == 2:                                   # luhn
        m = ndigits(v, n, d)
        return luhn_digits(d, m) if m <= MAXD else 0
    if code == 3:                                   # pan
        m = ndigits(v, n, d)
        if m > 19 or not pan_brand(d, m):
            return 0
        return luhn_digits(d, m)
    if code == 4:                                   # aba
        m = ndigits(v, n, d)
        if m != 9:
            return 0
        for k in range(9):
            if d[k] != 48:
                break
        else:
            return 0
        s = 3 * (d[0] + d[3] + d[6] - 144) + 7 * (d[1] + d[4] + d[7] - 144) + (d[2] + d[5] + d[8] - 144)
        return s % 10 == 0
    if code == 5:                                   # nanp
        m = ndigits(v, n, d)
        k = 0
        if m == 11 and d[0] == 49:
            k = 1
            m = 10
        if m != 10:
            return 0
        if d[k] < 50 or d[k + 3] < 50:
            return 0
        if (d[k + 1] == 49 and d[k + 2] == 49) or (d[k + 4] == 49 and d[k + 5] == 49):
            return 0
        if d[k + 3] == 53 and d[k + 4] == 53 and d[k + 5] == 53 and d[k + 6] == 48 and d[k + 7] == 49:
            return 0
        return distinct_at_least(d + k, 10, 3)
    if code == 6:                                   # email: the host is not a reserved name
        at = n - 1
        while at >= 0 and v[at] != 64:
            at -= 1
        host = v + at + 1
        hn = n - at - 1
        for k in range(_NRES):
            rl = _RES[k].n
            if hn == rl and _ieq(host, _RES[k].p, rl):
                return 0
            if hn > rl and host[hn - rl - 1] == 46 and _ieq(host + hn - rl, _RES[k].p, rl):
                return 0
        return 1
    if code == 7:                                   # dob
        return dob_c(v, n)                          # -1: ask Python
    return 1


ctypedef struct CStr:               # a reference set's member (the bytes object is kept in _CSTR_KEEP)
    const unsigned char *p
    Py_ssize_t n

DEF MAX_LISTED = 64
cdef CStr _SSN_BAD[MAX_LISTED]
cdef CStr _CARDS[MAX_LISTED]
cdef CStr _RES[MAX_LISTED]
cdef int _NSSN = 0, _NCARDS = 0, _NRES = 0
cdef list _CSTR_KEEP = []


cdef int c_list(object words, CStr *out) except -1:
    """A validators set or tuple of bytes as a C array (validate_c runs without the GIL)."""
    cdef int k = 0
    for w in words:
        if k == MAX_LISTED:
            raise CoreError("a validator's list outgrew its C table (MAX_LISTED)")
        _CSTR_KEEP.append(w)
        out[k].p = <const unsigned char *>PyBytes_AS_STRING(<bytes>w)
        out[k].n = PyBytes_GET_SIZE(<bytes>w)
        k += 1
    return k


_NSSN = c_list(SSN_INVALID, _SSN_BAD)
_NCARDS = c_list(TEST_CARDS, _CARDS)
_NRES = c_list(_V._EMAIL_RESERVED, _RES)


cdef inline bint in_list(const CStr *a, int na, const unsigned char *d, Py_ssize_t n) noexcept nogil:
    cdef int k
    for k in range(na):
        if a[k].n == n and memcmp(a[k].p, d, n) == 0:
            return True
    return False


cdef inline int _ieq(const unsigned char *a, const unsigned char *b, Py_ssize_t n) noexcept nogil:
    """ASCII case-insensitive ``a == b`` (b is lower case), as ``bytes.lower()`` compares."""
    cdef Py_ssize_t k
    cdef unsigned char c
    for k in range(n):
        c = a[k]
        if 65 <= c <= 90:
            c += 32
        if c != b[k]:
            return 0
    return 1


def check(str name, bytes v) -> bool:
    """The C twin of validator ``name`` (for tests)."""
    refresh_today()
    return bool(validate(TWINS[name], <const unsigned char *>PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v)))


# -- the per-match loop ---------------------------------------------------------------------------------
cdef class Info:
    """The engine's patterns as C arrays (built once per engine)."""
    cdef int nval, hot_base, npat, nsig
    cdef int *psig
    cdef int *pwidth
    cdef int64_t *pmaxw
    cdef char *pnctx
    cdef int *prmask
    cdef int *pcat
    cdef char *pin_field
    cdef char *pin_word
    cdef int *pvalid
    cdef int *hot_sig
    cdef list pats, rx, req, vfn
    cdef list reqfast               # by pattern: (member table, words) when the require needs no re
    cdef public object gate_ids
    cdef int *psom                  # index in ``somdb`` of the pattern's value regex, or -1 (``re`` finds the start)
    cdef char *pws                  # by ``somdb`` index: its starts are word starts (som_start_ws)
    cdef char *pemail               # by ``somdb`` index: a closed form: 1 email, 2 place, 3-6 names, 7 street
    cdef unsigned char *pfirst      # by ``somdb`` index, 256 each: bytes a match may begin with
    cdef unsigned int *scount       # by ``somdb`` index: value starts asked (value_start_c's timing)
    cdef double *cost_ws
    cdef double *cost_win
    cdef hs_database_t **somdb
    cdef int nsom
    cdef list som                   # the Database objects owning ``somdb``
    cdef void *reqc                 # ReqC by pattern (req_tables): one table per Info, not per exchange

    def __cinit__(self, engine):
        names = {fn: name for name, fn in _V.REGISTRY.items()}
        pats = list(engine.patterns)
        n = len(pats)
        self.npat = n
        self.nval = engine.n_values
        self.hot_base = engine.hot_base
        self.nsig = len(engine.signatures)
        self.psig = <int *>malloc((n + 1) * sizeof(int))
        self.pwidth = <int *>malloc((n + 1) * sizeof(int))
        self.pmaxw = <int64_t *>malloc((n + 1) * sizeof(int64_t))
        self.pnctx = <char *>malloc(n + 1)
        self.prmask = <int *>malloc((n + 1) * sizeof(int))
        self.pcat = <int *>malloc((n + 1) * sizeof(int))
        self.pin_field = <char *>malloc(n + 1)
        self.pin_word = <char *>malloc(n + 1)
        self.pvalid = <int *>malloc((n + 1) * sizeof(int))
        self.hot_sig = <int *>malloc((len(engine.hot_sig) + 1) * sizeof(int))
        if (self.psig == NULL or self.pwidth == NULL or self.pmaxw == NULL or self.pnctx == NULL
                or self.prmask == NULL or self.pcat == NULL or self.pin_field == NULL
                or self.pin_word == NULL or self.pvalid == NULL or self.hot_sig == NULL):
            raise MemoryError()                # __dealloc__ frees the ones that were allocated
        self.pats = pats
        self.rx = [p.rx for p in pats]
        self.req = [p.require for p in pats]
        self.vfn = [p.validator for p in pats]
        self.reqfast = [None] * n
        sets = {}                       # one WordSet per word set (patterns share them)
        for k, p in enumerate(pats):
            if p.require and len(p.require) == 1 and p.width <= 0 and p.rx is not None:
                table = _lead_group(p.rx, p.require[0][0])
                words = p.require[0][1]
                if table is not None and id(words) not in sets:
                    try:
                        sets[id(words)] = (WordSet(words), words)
                    except TypeError:       # a word that is not bytes: re decides, as before
                        sets[id(words)] = (None, words)
                if table is not None and sets[id(words)][0] is not None:
                    self.reqfast[k] = (table, sets[id(words)][0])
        for k, p in enumerate(pats):
            self.psig[k] = p.sig
            self.pwidth[k] = p.width
            self.pmaxw[k] = p.maxw
            self.pnctx[k] = bool(p.needs_ctx)
            self.prmask[k] = p.rec_mask
            self.pcat[k] = p.cat
            self.pin_field[k] = bool(p.in_field)
            self.pin_word[k] = bool(p.in_word)
            if p.validator is None:
                self.pvalid[k] = 0
            else:
                name = names.get(p.validator)
                if name in TWINS:
                    self.pvalid[k] = TWINS[name]
                elif name in PY_VALIDATORS:
                    self.pvalid[k] = V_PY
                else:
                    raise CoreError(f"validator without a C twin: {name}")
        for k, si in enumerate(engine.hot_sig):
            self.hot_sig[k] = si
        self.psom = <int *>malloc((n + 1) * sizeof(int))
        if self.psom == NULL:
            raise MemoryError()
        self._build_som(pats)
        g = bytearray(engine.n_ids + 1)
        for i in engine.gate_ids:
            g[i] = 1
        self.gate_ids = bytes(g)

    def _build_som(self, list pats):
        """A block-mode SOM database for each distinct value regex libhs can give a leftmost start
        for; the others stay with ``re``."""
        cdef int k
        cdef Database d
        uniq = {}
        for k in range(self.npat):
            self.psom[k] = -1
            p = pats[k]
            if p.width <= 0 and p.rx is not None and p.rx.pattern.endswith(rb"\Z") and not p.rx.flags & ~2:
                self.psom[k] = uniq.setdefault((p.rx.pattern, p.rx.flags), len(uniq))
        self.som = []
        self.nsom = len(uniq)
        self.somdb = <hs_database_t **>malloc((3 * self.nsom + 1) * sizeof(hs_database_t *))
        if self.somdb == NULL:
            raise MemoryError()
        self.pws = <char *>malloc(self.nsom + 1)
        self.pemail = <char *>calloc(self.nsom + 1, 1)
        if self.pemail == NULL:
            raise MemoryError()
        self.pfirst = <unsigned char *>malloc(256 * (self.nsom + 1))
        if self.pfirst == NULL:
            raise MemoryError()
        self.scount = <unsigned int *>calloc(self.nsom + 1, sizeof(unsigned int))
        self.cost_ws = <double *>calloc(self.nsom + 1, sizeof(double))
        self.cost_win = <double *>calloc(self.nsom + 1, sizeof(double))
        if self.pws == NULL or self.scount == NULL or self.cost_ws == NULL or self.cost_win == NULL:
            raise MemoryError()
        rxs = {(p.rx.pattern, p.rx.flags): p.rx for p in pats if p.rx is not None}
        for (pat, fl), j in uniq.items():
            d = _som_db(pat[:-2] + rb"\z", HS_FLAG_CASELESS if fl & 2 else 0, True)
            a = _som_db(rb"\A" + pat[:-2] + rb"\z", HS_FLAG_CASELESS if fl & 2 else 0, False)
            kind = _word_start(rxs[(pat, fl)]) if a is not None else 0
            # the anchored database that takes the byte before the value first (boundaries after
            # a word byte); libhs may refuse it (then the pattern is not tried by boundaries)
            a1 = _som_db(rb"\A[\x00-\xff]" + pat[:-2] + rb"\z", HS_FLAG_CASELESS if fl & 2 else 0, False) \
                if kind == 2 else None
            if kind == 2 and a1 is None:
                kind = 0
            self.som.append((d, a, a1))
            self.somdb[j] = d.db if d is not None else NULL
            self.somdb[self.nsom + j] = (<Database>a).db if a is not None else NULL
            self.somdb[2 * self.nsom + j] = (<Database>a1).db if a1 is not None else NULL
            self.pws[j] = kind
            self.pemail[j] = 1 if pat == EMAIL_VALUE_RX and not fl & 2 else \
                2 if pat == PLACE_VALUE_RX and not fl & 2 else \
                3 + NAME_VALUE_RX.index(pat) if pat in NAME_VALUE_RX and not fl & 2 else \
                7 if pat == STREET_VALUE_RX and not fl & 2 else 0
            fb = _first_bytes(rxs[(pat, fl)])
            memcpy(self.pfirst + 256 * <int>j, PyBytes_AS_STRING(<bytes>fb), 256)
        for k in range(self.npat):
            t = self.psom[k]
            if t >= 0 and self.somdb[t] == NULL and not self.pws[t] and not self.pemail[t]:
                self.psom[k] = -1

    @property
    def som_patterns(self) -> int:
        """How many patterns find their value's start with libhs (tests, bench)."""
        return sum(1 for k in range(self.npat) if self.psom[k] >= 0)

    @property
    def word_start_patterns(self) -> int:
        """How many value regexes find their start among word starts (tests, bench)."""
        return sum(1 for k in range(self.nsom) if self.pws[k])

    def __dealloc__(self):
        free(self.reqc)
        free(self.pws)
        free(self.pemail)
        free(self.pfirst)
        free(self.scount)
        free(self.cost_ws)
        free(self.cost_win)
        free(self.psom)
        free(self.somdb)
        dlp_forget_databases()           # a thread's value-start scratch was sized for this Info's set
        free(self.psig); free(self.pwidth); free(self.pmaxw); free(self.pnctx); free(self.prmask)
        free(self.pcat); free(self.pin_field); free(self.pin_word); free(self.pvalid); free(self.hot_sig)


DEF STRONG = 1
DEF CONTACT = 4


# -- the open record's entries, in C (the reference's list of tuples) -------------------------------------
ctypedef struct Ent:
    Py_hash_t h                  # the value's hash (has_h), else unused
    int64_t start                # absolute start of the value (a lazy entry: its match end, as the reference's t[5])
    int64_t le                   # a lazy entry: the match end in its buffer (``obj``)
    PyObject *obj                # owned: the raw value or NULL (has_h); the buffer (lazy)
    int si
    int cat
    int rmask
    int pat                      # a lazy entry: the pattern to extract it with
    char ctx
    char has_h
    char in_buf                  # has_h and the raw value is still ``obj[le:le + pat]`` (obj: the chunk)
    int cut                      # a lazy entry: ``obj`` is its chunk less this many leading bytes (detach_open)
    # (made by the GIL-free walk: ``obj`` is NULL where it will be the call's chunk, set by bind_chunk)


DEF EV_REC = 0                   # a finished record that needs Python: finish() in the batch
DEF EV_CONTACT = 1               # a contact value: count_contact
DEF EV_SAMPLE = 2                # a value of a record finished in the walk, for sc._sample (if still wanted)
DEF EV_STRONG_ID = 3             # keep_id(strong_ids, key) of a record finished in the walk
DEF EV_PERSON_ID = 4             # keep_id(person_ids, key)

ctypedef struct Ev:              # what the GIL-free walk leaves to the GIL-held batch, in order
    int kind
    int si                       # a contact value's or a sample's signature
    int64_t key                  # a record: its key; an identity: the record's hash
    int64_t end                  # a record: the next record's key (the reference's rec_end)
    Py_ssize_t a, n              # a record: its entries ``a[a:a + n]``; a value: ``chunk[a:a + n]``
    Py_ssize_t mark              # the walk's distinct adds made before this step (RecBuf.adds[:mark])


ctypedef struct ReqC:            # a pattern's require, for the walk (Info.reqfast's WordSet, its C tables)
    int kind                     # 0 none, 1 a leading group read off the bytes, 2 ``re`` (with the GIL)
    const unsigned char *member
    const uint64_t *short_tab
    size_t smask
    const WsSlot *slot
    size_t mask
    char has_empty
    char has_long


cdef bint grow_array(void **a, Py_ssize_t *cap, Py_ssize_t first, size_t size) noexcept nogil:
    """Double the C array ``*a`` of ``*cap`` elements of ``size`` bytes (``first`` when empty), without
    the GIL: False when out of memory (the array unchanged)."""
    cdef Py_ssize_t n = cap[0] * 2 if cap[0] else first
    cdef void *grown = realloc(a[0], n * size)
    if grown == NULL:
        return False
    a[0] = grown
    cap[0] = n
    return True


DEF EV_FIRST = 16                  # a RecBuf's first queue (768 bytes) and walk adds (2 KiB): an exchange
DEF ADDS_FIRST = 64                # with a contact block now and then needs no more; dense data doubles them


@cython.final
cdef class RecBuf:
    """The open record of a part (``sc._rec`` on the compiled path): the reference's list of
    ``(si, cat, ctx, rmask, hash, start, raw)`` tuples as a C array, so that a dense record makes
    no tuple or int per value. Python only asks whether it is empty.

    During a :func:`process` call it is also the chunk's queue: the walk (without the GIL) appends
    every entry here, records that ended stay in ``a[:rs]`` with an :c:type:`Ev` each, the open
    record is ``a[rs:n]``; the batch (with the GIL) finishes them in order and moves the open record
    to the front (rs = 0 between calls)."""
    cdef Ent *a
    cdef Py_ssize_t n, cap
    cdef Py_ssize_t rs                 # the open record's first entry (the walk)
    cdef Ev *ev                        # finished records and contact values, in order (the walk)
    cdef Py_ssize_t nev, evcap
    cdef ReqC *reqc                    # by pattern, for reqc_info (borrowed: reqc_info owns it)
    cdef object reqc_info
    cdef char *flags                   # by signature, 6 rows: raw kept, ignored, in a header, sample wanted, kind bits, email
    cdef int nflags
    cdef PyObject **dist               # by signature: the scanner's distinct counters (borrowed, per call)
    cdef PAdd *adds                    # the walk's distinct adds (records it finished), made in the batch
    cdef Py_ssize_t nadds, addcap
    cdef Py_ssize_t *addn              # by table (signatures, then strong, person, all records): adds not yet made
    cdef Py_ssize_t *sq                # by signature, SQ_MAX each: the distinct values queued as samples this call
    cdef int *nsq                      # ... how many (finish_c queues a sample only for a value not among them)
    cdef bint adds_free                # this call's tables take the walk's adds without the GIL (flush_queue)

    def __dealloc__(self):
        self.clear()
        free(self.a)
        free(self.ev)
        free(self.flags)
        free(self.dist)
        free(self.adds)
        free(self.addn)
        free(self.sq)
        free(self.nsq)

    def footprint(self) -> dict:
        """What this open record holds between calls (tests/test_core_memory.py: an exchange in
        flight pays for it): its C arrays' bytes, the largest object an entry keeps, and the
        address of the requires table (shared by every RecBuf of one Info)."""
        cdef Py_ssize_t k, big = 0
        cdef PyObject *o
        for k in range(self.n):
            o = self.a[k].obj
            if o != NULL and PyBytes_Check(<object>o) and PyBytes_GET_SIZE(<object>o) > big:
                big = PyBytes_GET_SIZE(<object>o)
        return {"entries": self.cap * sizeof(Ent), "events": self.evcap * sizeof(Ev),
                "adds": self.addcap * sizeof(PAdd), "largest_object": big,
                "reqc": <size_t>self.reqc}

    def __bool__(self) -> bool:
        return self.n > 0

    def __len__(self) -> int:
        return self.n

    cdef void clear(self) noexcept:
        cdef Py_ssize_t k
        cdef PyObject *o
        for k in range(self.n):
            o = self.a[k].obj
            self.a[k].obj = NULL
            Py_XDECREF(o)
        self.n = 0

    cdef Ent *push(self) except NULL:
        """A new zeroed entry at the end (the caller fills it; ``obj`` owned)."""
        cdef Ent *t = self.push_c()
        if t == NULL:
            raise MemoryError()
        return t

    cdef Ent *push_c(self) noexcept nogil:
        """push without the GIL: NULL when out of memory."""
        if self.n == self.cap and not grow_array(<void **>&self.a, &self.cap, 16, sizeof(Ent)):
            return NULL
        memset(&self.a[self.n], 0, sizeof(Ent))
        self.n += 1
        return &self.a[self.n - 1]

    cdef Ev *ev_push(self, int kind) noexcept nogil:
        """A new queued step (NULL when out of memory)."""
        cdef Ev *t
        if self.nev == self.evcap and not grow_array(<void **>&self.ev, &self.evcap, EV_FIRST, sizeof(Ev)):
            return NULL
        self.nev += 1
        t = &self.ev[self.nev - 1]
        t.kind = kind
        t.mark = self.nadds
        return t

    cdef int add_push(self, PyObject *d, Py_hash_t h, int cat, int ti) noexcept nogil:
        """A distinct add for the batch (-1 when out of memory)."""
        if self.nadds == self.addcap and not grow_array(<void **>&self.adds, &self.addcap, ADDS_FIRST, sizeof(PAdd)):
            return -1
        self.adds[self.nadds].d = d
        self.adds[self.nadds].h = h
        self.adds[self.nadds].cat = cat
        self.adds[self.nadds].ti = ti
        self.addn[ti] += 1
        self.nadds += 1
        return 0


cdef RecBuf recbuf_of(sc):
    """The scanner's open record as a RecBuf (a part starts with the reference's empty list)."""
    r = sc._rec
    if type(r) is RecBuf:
        return <RecBuf>r
    if r:
        raise CoreError("a record of the Python reference in the compiled loop")
    cdef RecBuf rb = RecBuf.__new__(RecBuf)
    sc._rec = rb
    return rb


cdef inline object ent_raw(Ent *t):
    """A hashed entry's raw value (None if not kept), made now if it is still in its chunk."""
    if t.obj == NULL:
        return None
    if t.in_buf:
        return PyBytes_FromStringAndSize(PyBytes_AS_STRING(<object>t.obj) + t.le, t.pat)
    return <object>t.obj


cdef inline void set_obj(Ent *t, object o) noexcept:
    cdef PyObject *old = t.obj
    if o is None:
        t.obj = NULL
    else:
        Py_INCREF(o)
        t.obj = <PyObject *>o
    Py_XDECREF(old)


cdef void label_after(RecBuf rec, const char *b, Py_ssize_t blen, int64_t base, int64_t end, int si,
                      int64_t window) noexcept nogil:
    """ExchangeScanner._label_after (the open record: ``rec.a[rs:n]``)."""
    cdef Py_ssize_t k
    cdef Ent *t
    cdef int64_t at, lo
    cdef int64_t hot = end - base
    for k in range(rec.n - 1, rec.rs - 1, -1):
        t = &rec.a[k]
        if t.si != si or t.ctx:
            continue
        if not t.has_h:
            at = t.le + base
        else:
            at = t.start
        if end - at > window + 32:
            break
        lo = at - base
        if lo >= 0 and find1(b, blen, b'\n', lo, hot) < 0:
            t.ctx = 1


DEF COLS = 64                      # header columns the C table of column context covers


cdef int col_context(PartScan ps, dict col_sigs) except -1:
    """The scanner's ``{column: {signature, ...}}`` as a COLS x nsig byte table (ps.colctx), so that
    a CSV value's column context is one load, not a dict lookup and a set probe with int objects
    (~2 % of the dense scan). 1 when the table covers every column, 0 when some column does not (the
    caller then asks the dict). Rebuilt per process() call and after a header hotword changed the
    dict."""
    cdef int si
    cdef bint covered = True
    if ps.colctx == NULL:
        ps.colctx = <unsigned char *>malloc(COLS * ps.nsig + 1)
        if ps.colctx == NULL:
            raise MemoryError()
    memset(ps.colctx, 0, COLS * ps.nsig)
    for col, sigs in col_sigs.items():
        if type(col) is not int or not 0 <= col < COLS:
            covered = False
            continue
        for x in sigs:
            if type(x) is not int or not 0 <= x < ps.nsig:
                covered = False
                continue
            si = x
            ps.colctx[<int>col * ps.nsig + si] = 1
    return 1 if covered else 0


from libc.string cimport memmove

DEF SQ_MAX = 8                     # samples per signature the walk tells apart (SAMPLES_PER_SIGNATURE <= it)

cdef long _calls = 0                   # process() calls (counted with the GIL held)
cdef long _exits = 0                   # times the walk took the GIL back for one hit (a rare path)
cdef long _batches = 0                 # GIL-held batches that finished the walk's queued records
cdef double _walk_ticks = 0, _batch_ticks = 0   # time in the walk / in the batches (dlp_ticks units)
cdef double _free_ticks = 0            # ... of which the batches' distinct adds made without the GIL
cdef long _queued[5]                   # the batches' steps by kind (EV_REC ... EV_PERSON_ID)
_queued[:] = [0, 0, 0, 0, 0]


def pass_counts() -> tuple:
    """``(calls, exits, batches)`` of :func:`process` so far: its calls, the times its GIL-free walk
    took the GIL back for one hit (a Python-shaped rare path: ``re``, a Python validator, a quoted
    CSV field, an HTML header cell, a header hotword), and the GIL-held batches that finished the
    queued records (one per call, plus one before each header hotword). Tests and bench read it."""
    return (_calls, _exits, _batches)


def gil_yields() -> int:
    """How many times a batch of :func:`process` let the GIL go between its records (tests)."""
    return _yields


def pass_ticks() -> tuple:
    """``(walk, batch, free)``: the time :func:`process` spent in its GIL-free walks, in its batches,
    and in the part of the batches that runs without the GIL (the walk's distinct adds), in
    dlp_ticks units (TSC cycles on x86-64; only ratios are meant; bench)."""
    return (_walk_ticks, _batch_ticks, _free_ticks)


def queued_steps() -> tuple:
    """The batches' steps so far by kind: (records finished with the GIL, contact values, samples,
    strong identities, person identities); records the walk finished itself are not steps."""
    return tuple(_queued[k] for k in range(5))


ctypedef Py_ssize_t (*vstart_t)(void *info, int t, const char *b, Py_ssize_t lo, Py_ssize_t e,
                                int64_t maxw) noexcept nogil

cdef extern from "Python.h":
    Py_hash_t hash_bytes_nogil "_Py_HashBytes"(const void *src, Py_ssize_t n) nogil   # pure SipHash


ctypedef struct Walk:              # the walk's state (process): what the reference keeps in locals
    const char *b
    Py_ssize_t blen
    int64_t base, window, maxrec, line_start, rec_key
    int64_t nl_e, nl_r             # the last record-key LF search: its end and answer
    int64_t c_row, c_at, c_col     # the last column count: its row, end and answer
    char delim
    bint lines, is_json, is_html, first_line, tabular, sc_tabular, has_cols, has_key
    int cstate                     # the column table: 1 covers all, 0 ask the dict, 2 not a dict
    long exits
    int nsig
    bint fast                      # records may be finished in the walk (no EDM matcher)
    bint per_id                    # the reference's estimate per line (finished in the batch)
    bint strong_ids_done, person_ids_done     # keep_id on that set is a no-op from now on
    PyObject *strong_recs
    PyObject *person_recs
    PyObject *all_recs


def process(sc, PartScan ps not None, bytes buf not None, int64_t base, Info info not None) -> None:
    """ExchangeScanner._process over the C array of hits: same decisions, same record entries.

    Two phases (issue 19 point 1): :func:`walk` does the per-hit work (value starts, requires,
    validation, hashing, record keys, column context, record entries) for the whole chunk without
    the GIL, and queues the records that ended and the contact values in order; :func:`flush_queue`
    then finishes them with the GIL in one batch (sets, samples, EDM, precision checks). The
    verdict is read after the call, and nothing the walk reads is written by finishing (the header
    signatures are: a header hotword flushes the queue first), so the results are the reference's.

    The PartScan is held for the call: the Python the batch calls may let another thread run, and a
    scan of the same part from there would move the hits array under it."""
    ps._enter()
    try:
        _process(sc, ps, buf, base, info)
    finally:
        ps.busy = 0


cdef int col_state(PartScan ps, object col_sigs) except -1:
    """Walk.cstate for the scanner's column dict (rebuilt when a header hotword changed it)."""
    if type(col_sigs) is dict:
        return col_context(ps, <dict>col_sigs)
    return 2


cdef int req_tables(RecBuf rec, Info info) except -1:
    """The patterns' requires as C structs, built once per Info (the WordSets they point into live
    as long as the Info does); the RecBuf borrows them and keeps its Info. They were built per
    RecBuf, i.e. per exchange: 5 KiB of every exchange's memory (93 patterns x 56 bytes)."""
    cdef int k
    cdef ReqC *t
    cdef ReqC *tab
    cdef WordSet ws
    if rec.reqc_info is info:
        return 0
    if info.reqc == NULL:
        tab = <ReqC *>calloc(info.npat + 1, sizeof(ReqC))
        if tab == NULL:
            raise MemoryError()
        for k in range(info.npat):
            req = info.req[k]
            if not (PyTuple_GET_SIZE(req) != 0 if type(req) is tuple else req):
                continue
            t = &tab[k]
            rf = info.reqfast[k]
            if rf is None:
                t.kind = 2
                continue
            ws = <WordSet>(<tuple>rf)[1]
            t.kind = 1
            t.member = <const unsigned char *>PyBytes_AS_STRING(<bytes>(<tuple>rf)[0])
            t.short_tab = ws.short_tab
            t.smask = ws.smask
            t.slot = ws.slot
            t.mask = ws.mask
            t.has_empty = ws.has_empty
            t.has_long = ws.has_long
        info.reqc = tab
    rec.reqc = <ReqC *>info.reqc
    rec.reqc_info = info
    return 0


cdef int _process(sc, PartScan ps, bytes buf, int64_t base, Info info) except -1:
    global _calls, _exits, _batches, _walk_ticks, _batch_ticks
    cdef double t0, t1
    cdef Walk w
    cdef int rc = 0, si
    cdef RecBuf rec = recbuf_of(sc)
    cdef RecEnv env = rec_env(sc)
    memset(&w, 0, sizeof(Walk))
    w.b = PyBytes_AS_STRING(buf)
    w.blen = PyBytes_GET_SIZE(buf)
    w.base = base
    w.window = sc.policy.hotword_window
    w.maxrec = sc.policy.max_record_bytes
    mode = sc._mode
    w.lines = mode == "lines"
    w.is_json = mode == "json"
    w.is_html = mode == "html"
    rec_key_obj = sc._rec_key
    w.has_key = rec_key_obj is not None
    if w.has_key:
        w.rec_key = rec_key_obj
    sc._rbuf = buf
    sc._rbase = base
    w.line_start = sc._line_start
    w.first_line = w.line_start < 0
    w.sc_tabular = bool(sc._tabular)
    w.tabular = w.lines and w.sc_tabular
    w.delim = (<bytes>sc._delim)[0]
    col_sigs = sc._col_sigs
    w.has_cols = bool(col_sigs)
    w.cstate = col_state(ps, col_sigs) if w.lines and w.has_cols else 2
    w.nl_e = w.nl_r = w.c_row = -1
    # by signature: is a value's raw kept (the reference: want[si] or keep[si] at the hit; a sample
    # taken meanwhile only turns want off, and finish asks want again, so the start's is the same)
    cdef list want = sc._keep_raw
    cdef list keep = sc._keep_placed
    cdef int nsig = ps.nsig
    if rec.nflags < nsig:
        free(rec.flags)
        free(rec.dist)
        free(rec.addn)
        free(rec.sq)
        free(rec.nsq)
        rec.nflags = 0
        rec.flags = <char *>malloc(6 * nsig + 1)
        rec.dist = <PyObject **>malloc((nsig + 3) * sizeof(PyObject *))
        rec.addn = <Py_ssize_t *>calloc(nsig + 3, sizeof(Py_ssize_t))
        rec.sq = <Py_ssize_t *>calloc(nsig * SQ_MAX + 1, 2 * sizeof(Py_ssize_t))
        rec.nsq = <int *>calloc(nsig + 1, sizeof(int))
        if rec.flags == NULL or rec.dist == NULL or rec.addn == NULL or rec.sq == NULL or rec.nsq == NULL:
            raise MemoryError()
        rec.nflags = nsig
    for si in range(nsig):
        rec.flags[si] = 1 if (want[si] or keep[si]) else 0
        rec.flags[nsig + si] = 1 if env.ignored[si] else 0
        rec.flags[3 * nsig + si] = 1 if env.want[si] else 0
        rec.flags[4 * nsig + si] = <char>(<int>env.kinds[si])
        rec.flags[5 * nsig + si] = 1 if env.is_email[si] else 0
        rec.dist[si] = <PyObject *>env.distinct[si]
    header_flags(rec, nsig, env.header)
    w.nsig = nsig
    w.fast = env.edm is None
    w.per_id = env.per_id
    w.strong_recs = <PyObject *>env.strong_recs
    w.person_recs = <PyObject *>env.person_recs
    w.all_recs = <PyObject *>env.all_recs
    rec.dist[nsig] = w.strong_recs
    rec.dist[nsig + 1] = w.person_recs
    rec.dist[nsig + 2] = w.all_recs
    memset(rec.addn, 0, (nsig + 3) * sizeof(Py_ssize_t))
    memset(rec.nsq, 0, nsig * sizeof(int))
    rec.adds_free = adds_free(rec, nsig, <Py_ssize_t>ps.hits.n)
    w.strong_ids_done = env.ids_capped and len(env.strong_ids) >= _IDS_CAP
    w.person_ids_done = env.ids_capped and len(env.person_ids) >= _IDS_CAP
    req_tables(rec, info)
    refresh_today()
    _calls += 1
    try:
        with nogil:
            t0 = dlp_ticks()
            rc = walk(&w, rec, info, ps, sc, buf, env)
            t1 = dlp_ticks()
        flush_queue(rec, sc, buf, env)
        detach_open(rec, buf, info)
        _walk_ticks += t1 - t0
        _batch_ticks += dlp_ticks() - t1
    except BaseException:
        drop_queue(rec, buf)
        raise
    finally:
        _exits += w.exits
    _batches += 1
    env_flush(sc, env)
    if w.has_key:
        sc._rec_key = w.rec_key
    return 0


cdef void header_flags(RecBuf rec, int nsig, set header) noexcept:
    """The scanner's header signatures as the flags' third row (rebuilt after a header hotword)."""
    cdef int si
    for si in range(nsig):
        rec.flags[2 * nsig + si] = 1 if si in header else 0


DEF REC_C = 64                     # values of a record finish_c takes (more: the batch does)


cdef int finish_c(Walk *w, RecBuf rec, Py_ssize_t a, Py_ssize_t nrec) noexcept nogil:
    """:func:`finish` in the walk, for a record that needs no Python (no sample object, no EDM, no
    precision check, no estimate, no deferred value, no object of an earlier chunk): its distinct
    adds go to ``rec.adds``, its samples and identities to the queue, all in the reference's
    order (the batch makes them in that order). 1 done, 0 "finish it in the batch" (nothing done),
    -1 out of memory."""
    cdef Ent *ents = rec.a + a
    cdef Ent *t
    cdef int nsig = w.nsig
    cdef const char *ign = rec.flags + nsig
    cdef const char *hdr = rec.flags + 2 * nsig
    cdef const char *wnt = rec.flags + 3 * nsig
    cdef const char *knd = rec.flags + 4 * nsig
    cdef Py_ssize_t x
    cdef int uncond = 0, cats = 0, kind = 0, nh = 0, si
    cdef bint any_ctx = False, is_strong, is_person
    cdef Py_hash_t hc[REC_C]
    cdef Py_hash_t fp
    cdef Ev *ev
    cdef int psi[REC_C]                  # the strong values, for the reference's estimate per line
    cdef Py_hash_t ph[REC_C]
    cdef int np = 0, k, j, c, nbest = 0
    for x in range(nrec):
        if ents[x].obj != NULL:
            return 0                     # an earlier chunk's entry: its object is released with the GIL
        if ents[x].ctx:
            uncond |= ents[x].cat
            any_ctx = True
    if not any_ctx:
        return 1        # every entry counts only through one in context: none here (lines of dates)
    if not w.fast:
        return 0
    for x in range(nrec):                # first: does any step of finish() need Python?
        t = &ents[x]
        si = t.si
        if not t.ctx and not (t.rmask & uncond and not hdr[si]):
            continue
        if ign[si]:
            continue
        if not t.ctx or not t.has_h:     # the organisation-field check; a deferred value
            return 0
        if t.cat == STRONG and w.per_id:
            if np == REC_C:
                return 0
            psi[np] = si
            ph[np] = t.h
            np += 1
        cats |= t.cat
        kind |= knd[si]
        nh += 1
    if nh > REC_C:
        return 0
    is_strong = (cats & STRONG) and (cats & 2)
    is_person = kind & 3 == 3
    if (is_person and not is_strong) or (kind & 5 == 5 and not is_person):
        return 0                         # the obituary or the home check
    if is_strong and np:                 # finish()'s estimate: enough of one kind on the line?
        for k in range(np):
            if any_before(psi, k, psi[k]):
                continue
            c = 0
            for j in range(k, np):
                if psi[j] == psi[k] and not seen_before(psi, ph, k, j):
                    c += 1
            if c > nbest:
                nbest = c
        if nbest >= _EST_MIN:
            return 0                     # an estimated record: the batch
    nh = 0
    for x in range(nrec):
        t = &ents[x]
        si = t.si
        if not t.ctx and not (t.rmask & uncond and not hdr[si]):
            continue
        if ign[si]:
            continue
        if rec.add_push(rec.dist[si], t.h, t.cat, si) < 0:
            return -1
        if wnt[si] and t.in_buf and new_sample(rec, w.b, si, t.le, t.pat):
            ev = rec.ev_push(EV_SAMPLE)
            if ev == NULL:
                return -1
            ev.si = si
            ev.a = t.le
            ev.n = t.pat
        hc[nh] = t.h
        nh += 1
    if not nh or not (is_strong or is_person):
        return 1
    fp = sorted_tuple_hash(hc, nh)
    if is_strong:
        if rec.add_push(w.strong_recs, fp, 0, nsig) < 0 or rec.add_push(w.all_recs, fp, 0, nsig + 2) < 0:
            return -1
        if not w.strong_ids_done:
            ev = rec.ev_push(EV_STRONG_ID)
            if ev == NULL:
                return -1
            ev.key = fp
    if is_person:
        if rec.add_push(w.person_recs, fp, 0, nsig + 1) < 0:
            return -1
        if not is_strong and rec.add_push(w.all_recs, fp, 0, nsig + 2) < 0:
            return -1
        if not w.person_ids_done:
            ev = rec.ev_push(EV_PERSON_ID)
            if ev == NULL:
                return -1
            ev.key = fp
    return 1


cdef int _sq_want = SQ_MAX + 1         # SAMPLES_PER_SIGNATURE (set by rec_env); above SQ_MAX: every value queued


cdef bint new_sample(RecBuf rec, const char *b, int si, Py_ssize_t a, Py_ssize_t n) noexcept nogil:
    """Queue ``b[a:a + n]`` as a sample of ``si``? Only the first SAMPLES_PER_SIGNATURE distinct
    values of a call can matter: the scanner keeps that many distinct samples, and one equal to a
    kept sample or to an earlier queued value changes nothing (sc._sample compares fingerprints of
    the same bytes). A value equal to a queued one is dropped here; the others queue up to that
    many; later ones cannot be taken (the first that many distinct values fill what is left)."""
    cdef Py_ssize_t *q = rec.sq + 2 * SQ_MAX * si
    cdef int k, m = rec.nsq[si]
    if _sq_want > SQ_MAX:
        return True
    if m >= _sq_want:
        return False
    for k in range(m):
        if q[2 * k + 1] == n and memcmp(b + q[2 * k], b + a, n) == 0:
            return False
    q[2 * m] = a
    q[2 * m + 1] = n
    rec.nsq[si] = m + 1
    return True


cdef void bind_chunk(Ent *a, Py_ssize_t n, object buf) noexcept:
    """The walk's entries that stand for the chunk (a kept raw value, a deferred one) get it as
    their object, as the reference's entries hold it."""
    cdef Py_ssize_t k
    for k in range(n):
        if a[k].obj == NULL and (a[k].in_buf or not a[k].has_h):
            Py_INCREF(buf)
            a[k].obj = <PyObject *>buf


cdef void release(Ent *a, Py_ssize_t n) noexcept:
    cdef Py_ssize_t k
    cdef PyObject *o
    for k in range(n):
        o = a[k].obj
        a[k].obj = NULL
        Py_XDECREF(o)


cdef void compact(RecBuf rec, object buf) noexcept:
    """The open record ``a[rs:n]`` to the front, with its objects: a RecBuf as between calls."""
    cdef Py_ssize_t m = rec.n - rec.rs
    bind_chunk(rec.a + rec.rs, m, buf)
    if rec.rs:
        memmove(rec.a, rec.a + rec.rs, m * sizeof(Ent))
        rec.n = m
        rec.rs = 0
    rec.nev = 0
    rec.nadds = 0


DEF CUT_CTX = 16                   # bytes a detached lazy entry keeps before its longest match (\b, a class)


cdef int detach_open(RecBuf rec, object buf, Info info) except -1:
    """After a call, the open record's entries let go of the chunk: a kept raw value becomes its
    own bytes, a deferred one keeps only what its extraction reads (the pattern's widest match and a
    little context before it, up to its end). An exchange waiting for its next chunk (an open
    record: a contact block every 16 KiB) held its whole chunk (tail + data, 8 KiB to 1 MiB)
    through one entry; now a few dozen bytes. At most one record's entries per call: nothing on
    the dense path's budget. A pattern with a lookbehind (none in the pack) keeps its chunk."""
    cdef Py_ssize_t k, blen = PyBytes_GET_SIZE(buf)
    cdef Ent *t
    cdef int64_t lo
    cdef PyObject *b = <PyObject *>buf
    for k in range(rec.n):
        t = &rec.a[k]
        if t.obj != b:
            continue
        if t.has_h:
            if t.in_buf:
                set_obj(t, PyBytes_FromStringAndSize(PyBytes_AS_STRING(buf) + t.le, t.pat))
                t.in_buf = 0
            continue
        rx = info.rx[t.pat]
        if rx is not None and b"(?<" in (<object>rx).pattern:
            continue
        lo = t.le - t.cut - info.pmaxw[t.pat] - CUT_CTX
        if lo < 0:
            lo = 0
        if t.le - t.cut > blen or t.cut + lo > 0x7fffffff or (lo == 0 and t.le - t.cut == blen):
            continue
        set_obj(t, PyBytes_FromStringAndSize(PyBytes_AS_STRING(buf) + lo, t.le - t.cut - lo))
        t.cut += <int>lo
    return 0


cdef void drop_queue(RecBuf rec, object buf) noexcept:
    """After an error: the queued records are dropped (their entries' objects released)."""
    release(rec.a, rec.rs)
    compact(rec, buf)


DEF YIELD_EVERY = 63               # + 1: queued steps between two releases of the GIL in a batch
cdef long _yields = 0                  # times a batch let the GIL go (counted with the GIL held)


cdef void gil_gap() noexcept nogil:
    """Nothing: the GIL is released around this call, which lets a waiting thread in."""
    pass


cdef int flush_queue(RecBuf rec, object sc, object buf, RecEnv env) except -1:
    """The batch (with the GIL): the walk's finished records and contact values, in the walk's
    order, exactly as the reference handles them at the hit that ended them."""
    global _batches, _yields
    cdef Py_ssize_t q, done = 0
    cdef Ev *ev
    cdef const char *b = PyBytes_AS_STRING(buf)
    for q in range(rec.nev):
        if q & YIELD_EVERY == YIELD_EVERY:
            # a record finished here holds the GIL ~1 us: let a waiting thread (the event loop) in
            # every YIELD_EVERY + 1 steps (CPython hands the GIL over when one asked for it)
            _yields += 1
            with nogil:
                gil_gap()
        ev = &rec.ev[q]
        _queued[ev.kind] += 1
        if done < ev.mark:
            flush_adds(rec, env, done, ev.mark)
            done = ev.mark
        if ev.kind == EV_CONTACT:
            count_contact(sc, env, ev.si, b + ev.a, ev.n, None)
        elif ev.kind == EV_SAMPLE:
            if env.want[ev.si]:
                sc._sample(ev.si, PyBytes_FromStringAndSize(b + ev.a, ev.n))
        elif ev.kind == EV_STRONG_ID:
            keep_id(sc, env, env.strong_ids, ev.key)
        elif ev.kind == EV_PERSON_ID:
            keep_id(sc, env, env.person_ids, ev.key)
        else:
            bind_chunk(rec.a + ev.a, ev.n, buf)
            try:
                finish(sc, env, rec.a + ev.a, ev.n, ev.key, ev.end)
            finally:
                release(rec.a + ev.a, ev.n)
    flush_adds(rec, env, done, rec.nadds)
    compact(rec, buf)
    return 0


DEF ADDS_YIELD = 4095              # + 1: the walk's adds made between two releases of the GIL


cdef bint adds_free(RecBuf rec, int nsig, Py_ssize_t nhits) except -1:
    """Can this call's walk adds be made without the GIL? Every table is a :class:`Distinct` that
    stays exact through them (at most one add per hit to each: no switch to the sketch, which is
    Python)."""
    cdef int ti
    for ti in range(nsig + 3):
        d = <object>rec.dist[ti]
        if type(d) is not Distinct or (<Distinct>d).py is not None:
            return False
        # each entry (this chunk's hits and the open records' carried in) adds at most once to
        # its table; every other record once to each record table
        if (<Distinct>d).n + nhits + rec.n + 1 > (<Distinct>d).cap:
            return False
    return True


cdef int _dcadd(Distinct d, Py_hash_t h) except -1:
    # called without the GIL (flush_adds_c): -2 where cadd would need Python (the sketch, the cap, a
    # growth). n only grows and a switched table keeps n > cap: one test covers the sketch and the cap
    if d.n >= d.cap or (h != 0 and (d.tab == NULL or <size_t>(d.n + 1) * 10 > (d.mask + 1) * 7)):
        return -2
    return d.cadd(h)


cdef void _dprefetch(Distinct d, Py_hash_t h) noexcept:
    d.prefetch_m(mix64(<uint64_t>h))


ctypedef int (*dcadd_t)(PyObject *d, Py_hash_t h) noexcept nogil
ctypedef void (*dprefetch_t)(PyObject *d, Py_hash_t h) noexcept nogil


cdef int pregrow(RecBuf rec, int nsig) except -1:
    """Grow each table (with the GIL) to take the walk's adds still to be made, so that Distinct.cadd
    does not grow it in flush_adds_c (a failed allocation raises: that needs the GIL). The counts do
    not depend on a table's size; this follows cadd's rule (grown past 70 % full)."""
    cdef int ti
    cdef Distinct d
    for ti in range(nsig + 3):
        if rec.addn[ti] <= 0:
            continue
        d = <Distinct>rec.dist[ti]
        if d.n >= d.cap:
            continue                     # past or at its cap: _dcadd hands these adds back to the GIL
        while d.tab == NULL or <size_t>(d.n + rec.addn[ti] + 1) * 10 > (d.mask + 1) * 7:
            d._grow()
    return 0


DEF AHEAD_C = 32                   # batch_flush's AHEAD: a slot is fetched this many adds before it is probed


cdef Py_ssize_t flush_adds_c(RecBuf rec, RecEnv env, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """batch_flush of ``rec.adds[lo:hi]`` without the GIL (adds_free and pregrow made it safe):
    Distinct.cadd through a pointer, each slot fetched AHEAD_C adds before it is probed."""
    cdef dcadd_t cadd = <dcadd_t>_dcadd
    cdef dprefetch_t pre = <dprefetch_t>_dprefetch
    cdef PAdd *pb = rec.adds
    cdef Py_ssize_t k
    cdef int r
    for k in range(lo, hi if hi - lo < AHEAD_C else lo + AHEAD_C):
        pre(pb[k].d, pb[k].h)
    for k in range(lo, hi):
        if k + AHEAD_C < hi:
            pre(pb[k + AHEAD_C].d, pb[k + AHEAD_C].h)
        r = cadd(pb[k].d, pb[k].h)
        if r == -2:
            return k                     # this add needs Python: it and the rest with the GIL, in order
        rec.addn[pb[k].ti] -= 1
        if r == 1:
            if pb[k].cat == STRONG:
                env.strong_values += 1
            elif pb[k].cat == CONTACT:
                env.contact_values += 1
    return hi


cdef int flush_adds(RecBuf rec, RecEnv env, Py_ssize_t lo, Py_ssize_t hi) except -1:
    """The walk's distinct adds ``rec.adds[lo:hi]``, in order: without the GIL when the call's
    tables allow it (after the batch's earlier adds), else through batch_add."""
    global _yields, _free_ticks
    cdef Py_ssize_t k
    cdef PAdd *t
    cdef double t0
    if rec.adds_free:
        batch_flush(env)                 # the adds before these (records finished in the batch)
        pregrow(rec, rec.nflags)
        with nogil:
            t0 = dlp_ticks()
            k = flush_adds_c(rec, env, lo, hi)
            t0 = dlp_ticks() - t0
        _free_ticks += t0
        if k == hi:
            return 0
        rec.adds_free = False            # a table reached its cap: the rest of the call with the GIL
        lo = k
    for k in range(lo, hi):
        if k & ADDS_YIELD == ADDS_YIELD:
            _yields += 1
            with nogil:
                gil_gap()
        t = &rec.adds[k]
        batch_add(env, <object>t.d, t.h, t.cat)
    return 0


cdef int walk(Walk *w, RecBuf rec, Info info, PartScan ps, object sc, object buf, RecEnv env) except -1 nogil:
    """ExchangeScanner._process for one chunk's hits without the GIL (see :func:`process`). The
    rare Python-shaped steps take it back for that hit only (``w.exits``)."""
    global _batches
    cdef const char *b = w.b
    cdef Py_ssize_t blen = w.blen
    cdef int64_t base = w.base
    cdef int64_t *last_hot = ps.last_hot
    cdef char *header = ps.header
    cdef int nval = info.nval
    cdef size_t k
    cdef unsigned int i
    cdef int64_t end, e, s, lo, r, rk, maxw, col, start
    cdef int si, wd, cat, rmask, code, t, ok
    cdef bint ctx, lazy
    cdef Py_ssize_t r2, vn, vo
    cdef Ent *ent
    cdef Ev *ev
    cdef Py_hash_t hv
    cdef ReqC *rq
    cdef vstart_t vstart = <vstart_t>value_start_c      # reads C fields of the Info only (no Python)
    for k in range(ps.hits.n):
        i = ps.hits.a[k].id
        end = ps.hits.a[k].end
        if i >= <unsigned int>nval:
            si = info.hot_sig[i - info.hot_base]
            # a hotword in a header names a column; it is not a label for the next values
            # (_header_hotword answers False, with no effect, off the first line of a table)
            ok = 0
            if w.is_html or (w.first_line and w.sc_tabular and base <= 0
                             and rfind1(b, blen, b'\n', 0, end - base - 1) < 0):
                with gil:
                    w.exits += 1
                    _batches += 1
                    flush_queue(rec, sc, buf, env)       # finishing reads the header signatures
                    if sc._header_hotword(buf, base, end, si):
                        ok = 1
                        header[si] = 1
                        header_flags(rec, w.nsig, env.header)
                        col_sigs = sc._col_sigs
                        w.has_cols = bool(col_sigs)
                        w.cstate = col_state(ps, col_sigs) if w.lines and w.has_cols else 2
            if not ok:
                last_hot[si] = end
                if rec.n > rec.rs:
                    label_after(rec, b, blen, base, end, si, w.window)
            continue
        si = info.psig[i]
        wd = info.pwidth[i]
        maxw = info.pmaxw[i]
        rmask = info.prmask[i]
        cat = info.pcat[i]
        e = end - base
        ctx = not info.pnctx[i] or end - maxw - last_hot[si] <= w.window
        lazy = not ctx and not header[si]
        if lazy and not rmask:
            continue                     # needs a hotword or a column, and has neither
        s = 0
        vo = 0                           # the value is b[vo:vo + vn] (vo = s but for Python's slicing)
        vn = 0
        if not lazy:
            if wd > 0:
                s = e - wd
                if s >= 0 and e <= blen:
                    vo = s
                    vn = wd
                else:                    # buf[s:e] as Python slices it (negative bounds and all)
                    vo = s + blen if s < 0 else s
                    vo = 0 if vo < 0 else (blen if vo > blen else vo)
                    r = e + blen if e < 0 else e
                    r = 0 if r < 0 else (blen if r > blen else r)
                    vn = r - vo if r > vo else 0
            else:
                lo = e - maxw if e > maxw else 0
                if info.pin_field[i] and w.tabular:
                    r = rfind1(b, blen, w.delim, lo, e)
                    if r + 1 != 0:
                        lo = r + 1               # the value starts after its field's delimiter
                if info.pin_word[i]:         # ... or after the last blank
                    lo = after_blank(b, blen, lo, e)
                t = info.psom[i]
                s = vstart(<void *>info, t, b, lo, e, maxw) if t >= 0 else -2
                if s == -1:
                    continue
                if s >= 0:
                    rq = &rec.reqc[i]
                    if rq.kind:
                        ok = lead_group_c(rq, b, s, e) if rq.kind == 1 else -1
                        if ok < 0:
                            with gil:
                                w.exits += 1
                                rf = info.reqfast[i]
                                if rf is not None:
                                    ok = lead_group_ok(<tuple>rf, b, s, e)
                                else:
                                    m = info.rx[i].match(buf, s, e)      # the match re.search would return
                                    ok = m is not None and require_ok(m, info.req[i])
                        if not ok:
                            continue
                    vo = s
                    vn = e - s
                else:
                    with gil:
                        w.exits += 1
                        m = info.rx[i].search(buf, lo, e)
                        ok = m is not None
                        if ok:
                            req = info.req[i]
                            if req and not require_ok(m, req):
                                ok = 0
                            else:
                                s = m.start()
                                vo = s
                                vn = m.end() - s
                    if not ok:
                        continue
            code = info.pvalid[i]
            if code == V_PY:
                with gil:
                    w.exits += 1
                    ok = 1 if info.vfn[i](PyBytes_FromStringAndSize(b + vo, vn)) else 0
                if not ok:
                    continue
            elif code:
                ok = validate_c(code, <const unsigned char *>b + vo, vn)
                if ok < 0:
                    with gil:
                        w.exits += 1
                        ok = validate(code, <const unsigned char *>b + vo, vn)
                if not ok:
                    continue
            if cat == CONTACT and ctx:
                # contact values never make a record: counted in the batch, in order with the records;
                # one that is neither an email (the evidence) nor a wanted sample is only an add
                if rec.flags[w.nsig + si]:
                    continue             # ignored (count_contact returns at once)
                if not rec.flags[5 * w.nsig + si] and not rec.flags[3 * w.nsig + si]:
                    if rec.add_push(rec.dist[si], hash_bytes_nogil(b + vo, vn), CONTACT, si) < 0:
                        with gil:
                            raise MemoryError()
                    continue
                ev = rec.ev_push(EV_CONTACT)
                if ev == NULL:
                    with gil:
                        raise MemoryError()
                ev.si = si
                ev.a = vo
                ev.n = vn
                continue
        # which record (person) does the value belong to?
        if w.lines:
            # the last LF before e; hits come by end, so only the bytes since the last ask are read
            if w.nl_e >= 0 and e >= w.nl_e:
                r = rfind1(b, blen, b'\n', w.nl_e, e)
                if r < 0:
                    r = w.nl_r
            else:
                r = rfind1(b, blen, b'\n', 0, e)
            w.nl_e = e
            w.nl_r = r
            rk = r + base if r >= 0 else w.line_start
        elif w.is_json:
            rk = json_record(b, blen, e, w.maxrec) + base
        else:
            lo = e - w.maxrec if e > w.maxrec else 0
            r = -1
            for t in range(10):
                r2 = rfind_sub(b, blen, HTML_TAGS[t], HTML_LENS[t], lo, e)
                if r2 > r:
                    r = r2
            rk = r + base if r >= 0 else lo + base
        if end - rk > w.maxrec:
            rk += (end - rk) // w.maxrec * w.maxrec
        if not w.has_key or rk != w.rec_key:
            if rec.n > rec.rs:           # the record ended: finished here, or queued for the batch
                ok = finish_c(w, rec, rec.rs, rec.n - rec.rs)
                if ok < 0:
                    with gil:
                        raise MemoryError()
                if ok:
                    rec.n = rec.rs
                else:
                    ev = rec.ev_push(EV_REC)
                    if ev == NULL:
                        with gil:
                            raise MemoryError()
                    ev.key = w.rec_key
                    ev.end = rk
                    ev.a = rec.rs
                    ev.n = rec.n - rec.rs
                    rec.rs = rec.n
            w.rec_key = rk
            w.has_key = True
        if lazy:
            # only the record can make it count: decide (and pay for extraction) later
            ent = rec.push_c()
            if ent == NULL:
                with gil:
                    raise MemoryError()
            ent.si = si
            ent.cat = cat
            ent.rmask = rmask
            ent.start = end
            ent.le = e
            ent.pat = i
            ent.in_buf = 0               # obj: the chunk (bind_chunk)
            continue
        if not ctx:
            # header column context (CSV/TSV: delimiters before the value on its row, outside quotes)
            if w.lines and w.has_cols:
                r = rk - base + 1
                if r >= 0:
                    if r == w.c_row and s >= w.c_at:         # the row's last value: count on from there
                        col = count_unquoted(b, blen, w.delim, w.c_at, s)
                        if col >= 0:
                            col += w.c_col
                            w.c_at = s
                            w.c_col = col
                    else:
                        col = count_unquoted(b, blen, w.delim, r, s)
                        if col >= 0:
                            w.c_row = r
                            w.c_at = s
                            w.c_col = col
                    if col < 0 or w.cstate != 1:
                        with gil:
                            w.exits += 1
                            if col < 0:
                                w.c_row = -1
                                col = sc._column_of(buf, r, s)
                            if w.cstate == 1:
                                ctx = 0 <= col < COLS and ps.colctx[col * ps.nsig + si] != 0
                            elif w.cstate == 0:
                                cs = (<dict>sc._col_sigs).get(col)
                                ctx = cs is not None and si in cs
                            else:
                                ctx = si in sc._col_sigs.get(col, ())
                    else:
                        ctx = 0 <= col < COLS and ps.colctx[col * ps.nsig + si] != 0
            elif w.is_html:
                with gil:
                    w.exits += 1
                    ctx = sc._th_context(buf, base, s, rk, si)
            if not ctx and not rmask:
                continue
        start = s + base
        # the raw value stays only until its record is decided, and only while samples are wanted
        # (or a kept name or street): an offset into the chunk, made into bytes in the batch
        hv = hash_bytes_nogil(b + vo, vn)
        ent = NULL
        if rec.n > rec.rs:
            ent = &rec.a[rec.n - 1]
            if not (ent.si == si and ent.start == start):
                ent = NULL               # else a longer match from the same start: keep the longest
        if ent == NULL:
            ent = rec.push_c()
            if ent == NULL:
                with gil:
                    raise MemoryError()
        elif ent.obj != NULL:            # an entry of an earlier chunk: its object goes
            with gil:
                w.exits += 1
                set_obj(ent, None)
        ent.si = si
        ent.cat = cat
        ent.ctx = 1 if ctx else 0
        ent.rmask = rmask
        ent.h = hv
        ent.has_h = 1
        ent.start = start
        ent.in_buf = rec.flags[si]
        if ent.in_buf:
            ent.le = vo
            ent.pat = <int>vn
        else:
            ent.le = 0
            ent.pat = 0
    return 0


def value_start(Info info, int k, bytes buf, Py_ssize_t lo, Py_ssize_t e) -> int:
    """Where :func:`process` finds the start of pattern ``k``'s value ending at ``e`` searched from
    ``lo``: -1 none, -2 "ask re" (tests compare it with ``rx.search(buf, lo, e)``; bench)."""
    cdef int t = info.psom[k]
    if t < 0 or not 0 <= lo <= e <= PyBytes_GET_SIZE(buf):
        return -2
    return value_start_c(info, t, PyBytes_AS_STRING(buf), lo, e, info.pmaxw[k])


DEF MAX_GROUP = 64
DEF WS_INLINE = 23                 # words up to this long live in the C table


cdef inline uint64_t ws_hash(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """A word's hash (n <= WS_INLINE), three 8-byte loads instead of a multiply per byte (FNV-1a
    was ~half of a lookup on a roster's names); only this table uses it."""
    cdef uint64_t w[3]
    w[0] = w[1] = w[2] = 0
    memcpy(w, p, n)
    return mix64((w[0] * 0x9E3779B97F4A7C15ULL) ^ (w[1] * 0xC2B2AE3D27D4EB4FULL)
                 ^ (w[2] * 0x165667B19E3779F9ULL) ^ <uint64_t>n) | 1      # 0 marks an empty slot


ctypedef struct WsSlot:            # 32 bytes, two to a cache line (the table is 64-byte aligned)
    uint64_t h                     # ws_hash of the word; 0 = empty
    unsigned char k[WS_INLINE + 1]  # length, then the bytes


cdef class WordSet:
    """A require's word set (a frozenset of bytes) as C tables, so that asking about a name makes
    no bytes object and chases no pointer. Words of up to 8 bytes with no NUL (census names, nearly
    all) are their own key: the word zero-padded to a uint64, 8 bytes a slot, so the table of 3,000
    names is 64 KiB and stays in L2 beside the distinct tables (a 32-byte slot of hash, length and
    bytes made it 256 KiB, and ~90 % of a lookup was the wait for its line). Longer words (up to
    WS_INLINE bytes) live in 32-byte slots of hash, length and bytes; longer still are asked of the
    frozenset, which is kept."""
    cdef uint64_t *short_tab         # a short word's padded bytes; 0 = empty slot
    cdef size_t smask
    cdef bint has_empty              # b"" is a word (its padded form is the empty slot's 0)
    cdef WsSlot *slot
    cdef size_t mask
    cdef object words
    cdef bint has_long

    def __cinit__(self, words):
        cdef size_t slots = 16, sslots = 16, j
        cdef uint64_t h, key
        cdef bytes w
        cdef Py_ssize_t n, nshort = 0, nmid = 0
        cdef void *mem = NULL
        self.words = words
        for w in words:                   # (a non-bytes word raises TypeError: no table then)
            n = PyBytes_GET_SIZE(w)
            if n <= 8 and memchr(PyBytes_AS_STRING(w), 0, n) == NULL:
                nshort += 1
            elif n <= WS_INLINE:
                nmid += 1
        while sslots * 3 < 4 * nshort + 4:     # at most 75 % full: 3,000 names in 32 KiB
            sslots *= 2
        while slots < 2 * nmid + 2:
            slots *= 2
        self.short_tab = <uint64_t *>calloc(sslots, sizeof(uint64_t))
        if self.short_tab == NULL or posix_memalign(&mem, 64, slots * sizeof(WsSlot)) != 0:
            raise MemoryError()
        memset(mem, 0, slots * sizeof(WsSlot))
        self.slot = <WsSlot *>mem
        self.mask = slots - 1
        self.smask = sslots - 1
        for w in words:
            n = PyBytes_GET_SIZE(w)
            if n <= 8 and memchr(PyBytes_AS_STRING(w), 0, n) == NULL:
                if n == 0:
                    self.has_empty = True
                    continue
                key = 0
                memcpy(&key, PyBytes_AS_STRING(w), n)
                j = mix64(key) & self.smask
                while self.short_tab[j] != 0 and self.short_tab[j] != key:
                    j = (j + 1) & self.smask
                self.short_tab[j] = key
                continue
            if n > WS_INLINE:
                self.has_long = True
                continue
            h = ws_hash(<const unsigned char *>PyBytes_AS_STRING(w), n)
            j = h & self.mask
            while self.slot[j].h != 0:
                j = (j + 1) & self.mask
            self.slot[j].h = h
            self.slot[j].k[0] = <unsigned char>n
            memcpy(&self.slot[j].k[1], PyBytes_AS_STRING(w), n)

    def __dealloc__(self):
        free(self.short_tab)
        free(self.slot)

    cdef bint has(self, const unsigned char *p, Py_ssize_t n) except -1:
        cdef uint64_t h, key
        cdef size_t j
        cdef WsSlot *t
        if n <= 8 and memchr(p, 0, n) == NULL:
            if n == 0:
                return self.has_empty
            key = 0
            memcpy(&key, p, n)
            j = mix64(key) & self.smask
            while self.short_tab[j] != 0:
                if self.short_tab[j] == key:
                    return True
                j = (j + 1) & self.smask
            return False
        if n > WS_INLINE:
            return self.has_long and PyBytes_FromStringAndSize(<const char *>p, n) in self.words
        h = ws_hash(p, n)
        j = h & self.mask
        while self.slot[j].h != 0:
            t = &self.slot[j]
            if t.h == h and t.k[0] == n and memcmp(&t.k[1], p, n) == 0:
                return True
            j = (j + 1) & self.mask
        return False

    def __contains__(self, bytes w) -> bool:
        return self.has(<const unsigned char *>PyBytes_AS_STRING(w), PyBytes_GET_SIZE(w))


# -- the walk's require lookups without the GIL (WordSet's tables, read through ReqC) --------------------
cdef int ws_has_c(const ReqC *r, const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """WordSet.has on the C tables ReqC copies: 1 / 0, or -1 "ask the frozenset" (a long word)."""
    cdef uint64_t h, key
    cdef size_t j
    cdef const WsSlot *t
    if n <= 8 and memchr(p, 0, n) == NULL:
        if n == 0:
            return 1 if r.has_empty else 0
        key = 0
        memcpy(&key, p, n)
        j = mix64(key) & r.smask
        while r.short_tab[j] != 0:
            if r.short_tab[j] == key:
                return 1
            j = (j + 1) & r.smask
        return 0
    if n > WS_INLINE:
        return -1 if r.has_long else 0
    h = ws_hash(p, n)
    j = h & r.mask
    while r.slot[j].h != 0:
        t = &r.slot[j]
        if t.h == h and t.k[0] == n and memcmp(&t.k[1], p, n) == 0:
            return 1
        j = (j + 1) & r.mask
    return 0


cdef int lead_group_c(const ReqC *r, const char *b, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    """lead_group_ok without the GIL: 1 / 0, or -1 "ask with the GIL" (a group longer than
    MAX_GROUP, or a word longer than the C table holds)."""
    cdef unsigned char up[MAX_GROUP]
    cdef Py_ssize_t q = s, k
    cdef unsigned char c
    while q < e and r.member[<unsigned char>b[q]]:
        q += 1
    if q - s > MAX_GROUP:
        return -1
    for k in range(q - s):
        c = <unsigned char>b[s + k]
        up[k] = c - 32 if 97 <= c <= 122 else c
    return ws_has_c(r, up, q - s)


cdef bint lead_group_ok(tuple rf, const char *b, Py_ssize_t s, Py_ssize_t e) except -1:
    """``m.group(g).upper() in words`` for a leading group (:func:`_lead_group`) of a match that
    starts at ``s``: the group is ``b[s:q]``, q the first byte it cannot consume."""
    cdef const unsigned char *member = <const unsigned char *>PyBytes_AS_STRING(<bytes>rf[0])
    cdef unsigned char up[MAX_GROUP]
    cdef Py_ssize_t q = s, k
    cdef unsigned char c
    while q < e and member[<unsigned char>b[q]]:
        q += 1
    if q - s > MAX_GROUP:
        return PyBytes_FromStringAndSize(b + s, q - s).upper() in (<WordSet>rf[1]).words
    for k in range(q - s):
        c = <unsigned char>b[s + k]
        up[k] = c - 32 if 97 <= c <= 122 else c
    return (<WordSet>rf[1]).has(up, q - s)


def _count_unquoted(bytes buf not None, bytes delim not None, Py_ssize_t lo, Py_ssize_t hi) -> int:
    """For tests: the CSV column count's scan of ``buf[lo:hi]`` (-1 when a '"' is there)."""
    return count_unquoted(PyBytes_AS_STRING(buf), PyBytes_GET_SIZE(buf), delim[0], lo, hi)


def _lead_group_ok(Info info, int k, bytes buf, Py_ssize_t s, Py_ssize_t e):
    """For tests: pattern ``k``'s require by the leading-group table, or None without one."""
    rf = info.reqfast[k]
    if rf is None:
        return None
    return lead_group_ok(<tuple>rf, PyBytes_AS_STRING(buf), s, e)


cdef bint require_ok(object m, tuple req) except -1:
    """``all(m.group(g).upper() in words for g, words in req)`` without a generator."""
    cdef tuple gw
    for gw in req:
        if m.group(gw[0]).upper() not in gw[1]:
            return False
    return True


cdef int on_count(unsigned int id, unsigned long long frm, unsigned long long to, unsigned int flags,
                  void *ctx) noexcept nogil:
    (<size_t *>ctx)[0] += 1
    return 0


def raw_stream_scan(Database db not None, bytes data not None, Py_ssize_t chunk, bint count=False) -> int:
    """The ceiling: ``data`` through one stream of ``db`` in ``chunk``-byte calls, no callback (or a
    C callback that only counts, with ``count``); bench/core.py compares the full scanner with it."""
    cdef size_t seen = 0
    cdef match_event_handler cb = NULL
    if count:
        cb = on_count
    cdef hs_stream_t *st = NULL
    cdef const char *p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), at = 0, k
    cdef int rc = HS_SUCCESS
    if chunk <= 0:
        raise ValueError("chunk must be positive")     # else a loop without end, GIL released
    if hs_open_stream(db.db, 0, &st) != HS_SUCCESS:
        raise CoreError("hs_open_stream failed")
    with nogil:
        rc = scratch_for(db.db)
        while rc == HS_SUCCESS and at < n:
            k = chunk if n - at > chunk else n - at
            rc = hs_scan_stream(st, p + at, <unsigned int>k, 0, dlp_tls_scratch, cb, &seen)
            at += k
        hs_close_stream(st, dlp_tls_scratch if rc == HS_SUCCESS else NULL, cb, &seen)
    if rc != HS_SUCCESS:
        raise CoreError(f"hs_scan_stream failed ({rc})")
    return seen


# -- distinct counting in C (DistinctCounter's exact part) ------------------------------------------------
cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= 0xFF51AFD7ED558CCDULL
    x ^= x >> 33
    return x


def pool_held() -> int:
    """Bytes of freed Distinct tables kept for reuse (at most 8 MiB; tests, bench)."""
    return dlp_pool_held()


DEF DISTINCT_BULK = 4096          # a Distinct table that outgrows this many slots (32 KiB) is a bulk one


cdef object _HLL = None


def _hll_class():
    """sensor.detect.distinct.HyperLogLog with its register histogram counted in C, in one pass
    (the Python one reads the 64 KiB of registers once per rank: ~1.4 ms per
    estimate, and a dense exchange's result reads a dozen estimates). Same counts, same estimate."""
    global _HLL
    if _HLL is None:
        from sensor.detect.distinct import HyperLogLog

        class CHyperLogLog(HyperLogLog):
            def counts(self) -> list:
                return register_counts(self.registers, self.q + 2)

        _HLL = CHyperLogLog
    return _HLL


cdef list register_counts(bytearray regs, int n):
    """``[regs.count(k) for k in range(n)]`` in one pass."""
    cdef Py_ssize_t hist[256]
    cdef const unsigned char *r = <const unsigned char *>PyByteArray_AS_STRING(regs)
    cdef Py_ssize_t k, m = PyByteArray_GET_SIZE(regs)
    memset(hist, 0, sizeof(hist))
    for k in range(m):                   # ~30 us for 64 KiB: not worth letting the GIL go
        hist[r[k]] += 1
    return [hist[k] if k < 256 else 0 for k in range(n)]


DEF DLP_GROW_FREE = 64 << 10      # bytes: a Distinct table at least this big grows without the GIL


cdef void rehash(const Py_hash_t *src, size_t old, Py_hash_t *t, size_t slots, int shift) noexcept nogil:
    """Distinct._grow's move of ``old`` slots into the zeroed table ``t``."""
    cdef size_t k, j
    # homes are top bits: the old slot j's values go home to 2j or 2j + 1 (kj to kj + k - 1 when k
    # times bigger), so walking the old table in order writes the new one in order too (no random
    # access, no cache miss per value)
    for k in range(old):
        if src[k] != 0:
            j = <size_t>(mix64(<uint64_t>src[k]) >> shift)
            while t[j] != 0:
                j = (j + 1) & (slots - 1)
            t[j] = src[k]


cdef class Distinct:
    """sensor.detect.distinct.DistinctCounter with its exact part in C: an open-addressing table of
    the same ``Py_hash_t`` values (no int objects, no set), counted alike; past ``cap`` it hands the
    hashes to a Python DistinctCounter (HyperLogLog), which answers from then on. The table is
    allocated at the first add (an exchange with no value pays for none)."""
    cdef Py_hash_t *tab
    cdef size_t mask                 # slots - 1 (0 before the first add)
    cdef int shift                   # 64 - log2(slots): a hash's home slot is its mixed top bits
    cdef Py_ssize_t n
    cdef bint has_zero               # 0 marks an empty slot: the hash 0 is a flag
    cdef readonly Py_ssize_t cap
    cdef object py                   # the DistinctCounter, once past the cap
    cdef object regs                 # its sketch's registers (a bytearray) when this module folded it
    cdef int hll_p                   # ... and their precision (2**p registers)

    def __cinit__(self, Py_ssize_t cap):
        self.cap = cap

    def __dealloc__(self):
        dlp_tab_free(self.tab, (self.mask + 1) * sizeof(Py_hash_t) if self.tab != NULL else 0)

    cdef int _grow(self) except -1:
        # Doubling up to DISTINCT_BULK slots (2,867 values); a table that outgrows it is a bulk
        # exchange's and goes straight to 65,536 slots (45,875 values, 512 KiB), then fourfold. On the
        # dense breach CSV a 40,000-value table was rehashed at 8,192, 16,384 and 32,768 slots (its
        # rehashes and fresh tables ~4 % of the scan); now only at 4,096. The price: a table of
        # 2,868-22,937 values takes 512 KiB where doubling gave it 64-256 KiB (at most 8x, never past
        # 512 KiB); the largest (100,000 values, the cap) is 2 MiB either way.
        cdef size_t old = self.mask + 1 if self.tab != NULL else 0
        cdef size_t slots = 16
        cdef int shift = 60
        if old:
            slots = old * 16 if old == DISTINCT_BULK else (old * 4 if old > DISTINCT_BULK else old * 2)
            shift = self.shift - (4 if old == DISTINCT_BULK else (2 if old > DISTINCT_BULK else 1))
        cdef size_t nbytes = slots * sizeof(Py_hash_t)
        cdef Py_hash_t *t = <Py_hash_t *>dlp_pool_take(nbytes)       # the pool wants the GIL
        cdef const Py_hash_t *src = self.tab
        # A bulk table's growth (0.5-2 MiB zeroed or mapped, up to ~46,000 values rehashed: ~0.8 ms on
        # the dense breach CSV) is made without the GIL, so that the event loop is not kept waiting for
        # it (issue 19: the loop's p99 is set by the scan thread's longest holds). Nothing here is
        # visible until the new table is in place; the scanner's tables have one writer (its job).
        if nbytes >= DLP_GROW_FREE:
            with nogil:
                t = <Py_hash_t *>dlp_tab_zeroed(t, nbytes)
                if t != NULL:
                    rehash(src, old, t, slots, shift)
        else:
            t = <Py_hash_t *>dlp_tab_zeroed(t, nbytes)
            if t != NULL:
                rehash(src, old, t, slots, shift)
        if t == NULL:
            raise MemoryError()
        dlp_tab_free(self.tab, (self.mask + 1) * sizeof(Py_hash_t) if self.tab != NULL else 0)
        self.tab = t
        self.mask = slots - 1
        self.shift = shift
        return 0

    cdef inline void prefetch_m(self, uint64_t m) noexcept:
        """Start loading the slot a hash whose mix64 is ``m`` probes first: on dense data the tables
        outgrow the caches and every add would wait for memory; the add comes AHEAD adds later."""
        if self.tab != NULL:
            dlp_prefetch(&self.tab[m >> self.shift])

    cdef int cadd(self, Py_hash_t h) except -1:
        """DistinctCounter.add: 1 when ``h`` is new (past the cap: when the sketch changed)."""
        cdef size_t j
        if self.py is not None:
            return self._hll_add(h)
        if h == 0:
            if self.has_zero:
                return 0
            self.has_zero = True
        else:
            # grown at 70 % full (was 50 %): half the memory and one rehash fewer on a dense exchange
            # (a table of 40,000 values: 512 KiB, not 1 MiB); a probe mostly stays in its cache line
            if self.tab == NULL or <size_t>(self.n + 1) * 10 > (self.mask + 1) * 7:
                self._grow()
            j = <size_t>(mix64(<uint64_t>h) >> self.shift)
            while self.tab[j] != 0:
                if self.tab[j] == h:
                    return 0
                j = (j + 1) & self.mask
            self.tab[j] = h
        self.n += 1
        if self.n > self.cap:
            self._switch()
        return 1

    cdef int _switch(self) except -1:
        """DistinctCounter._switch for the C table: the same sketch (registers), folded in C without
        the GIL. Building the set of ``cap`` ints and adding them in Python took ~57 ms per counter,
        ~6 ms of it in one hold (the set), and a dense exchange switches several counters at once."""
        from sensor.detect.distinct import DistinctCounter
        c = DistinctCounter(self.cap)
        hll = _hll_class()()
        regs = hll.registers
        if type(regs) is not bytearray or PyByteArray_GET_SIZE(regs) != (<Py_ssize_t>1 << <int>hll.p):
            c.exact = self._set()                 # not the sketch this fold knows: the Python way
            c._switch()
        else:
            self._fold(regs, hll.p)
            c.hll = hll                           # DistinctCounter._switch's state after its loop
            c.exact = None
            c._n = 0
            c._cached_at = -1
            self.regs = regs
            self.hll_p = hll.p
        self.py = c
        dlp_tab_free(self.tab, (self.mask + 1) * sizeof(Py_hash_t) if self.tab != NULL else 0)
        self.tab = NULL
        self.mask = 0
        return 0

    cdef int _fold(self, bytearray regs, int p) except -1:
        cdef unsigned char *r = <unsigned char *>PyByteArray_AS_STRING(regs)
        cdef const Py_hash_t *tab = self.tab
        cdef size_t slots = self.mask + 1 if self.tab != NULL else 0
        cdef int has_zero = self.has_zero
        with nogil:
            dlp_hll_fold(tab, slots, has_zero, r, p)
        return 0

    cdef int _hll_add(self, Py_hash_t h) except -1:
        """DistinctCounter.add past the cap (``_n += 1``, then HyperLogLog.add) with the register
        update in C: 1 when a register grew. In Python an add cost ~1.5 us."""
        if self.regs is None:
            return 1 if self.py.add(h) else 0
        self.py._n += 1
        return dlp_hll_add(<uint64_t>h, <unsigned char *>PyByteArray_AS_STRING(self.regs), self.hll_p)

    cdef set _set(self):
        cdef set out = set()
        cdef size_t k
        if self.has_zero:
            out.add(0)
        if self.tab != NULL:
            for k in range(self.mask + 1):
                if self.tab[k] != 0:
                    out.add(self.tab[k])
        return out

    def add(self, h) -> bool:
        return self.cadd(h) == 1

    def __contains__(self, h) -> bool:
        cdef Py_hash_t x
        cdef size_t j
        if self.py is not None:
            return h in self.py
        x = h
        if x == 0:
            return self.has_zero
        if self.tab == NULL:
            return False
        j = <size_t>(mix64(<uint64_t>x) >> self.shift)
        while self.tab[j] != 0:
            if self.tab[j] == x:
                return True
            j = (j + 1) & self.mask
        return False

    def __len__(self) -> int:
        return self.n if self.py is None else len(self.py)

    def __bool__(self) -> bool:
        return self.n > 0 if self.py is None else bool(self.py)

    @property
    def approximate(self) -> bool:
        return self.py is not None

    @property
    def exact(self):
        """The exact hashes as a set (a copy), None past the cap: DistinctCounter's attribute."""
        return self._set() if self.py is None else None

    @property
    def hll(self):
        return self.py.hll if self.py is not None else None


# -- finishing a record (ExchangeScanner._finish_record, the common case typed) ---------------------------
cdef object _extract_fn = None
cdef object _deceased = None
cdef object _Evidence = None           # precision.Evidence: its email() has a C twin (evidence_email)
cdef object _ESTIMATED_SALT = None
cdef Py_ssize_t _IDS_CAP = 0, _EST_MIN = 0


cdef inline bint dadd(object counter, object h) except -1:
    """DistinctCounter.add, the exact branch inline (a C table for a :class:`Distinct`)."""
    if type(counter) is Distinct:
        return (<Distinct>counter).cadd(h) == 1
    cdef object s = counter.exact
    cdef Py_ssize_t n
    if s is not None:
        n = len(<set>s)
        (<set>s).add(h)                   # one hash-table probe, not two (``in`` then ``add``)
        if len(<set>s) == n:
            return False
        if n + 1 > counter.cap:
            counter._switch()
        return True
    return counter.add(h)


cdef inline void keep_id(object sc, RecEnv env, set ids, Py_hash_t fp) except *:
    # fp unboxed: the int object is made only while the set is filling or the cap is undecided
    # (was one per record and set, ~1 % of the dense scan in allocation alone)
    if len(ids) < _IDS_CAP:
        ids.add(fp)
    elif not env.ids_capped and fp not in ids:   # once capped, the answer cannot change
        env.ids_capped = True
        sc._ids_capped = True


DEF BATCH = 512                    # adds to Distinct tables made at once (batch_flush)
DEF AHEAD = 32                     # a slot is fetched this many adds before it is probed

ctypedef struct PAdd:
    PyObject *d                    # a Distinct of the scanner's (borrowed: it outlives the call)
    Py_hash_t h
    uint64_t m                     # mix64(h): its home slot's bits, computed once
    int cat                        # STRONG / CONTACT: a new value counts; 0: a record identity
    int ti                         # the walk's adds: the table's index in RecBuf.addn


cdef class RecEnv:
    """What finishing a record reads of the scanner, fetched once per :func:`process` call (the
    lists, sets and counters are the scanner's own objects, mutated in place; none is rebound
    meanwhile). It also holds what finishing defers to the next record or the end of the call
    (:func:`env_flush`): the value counts (added to the scanner's), and the adds to the distinct
    value and record counters (:func:`batch_add`), made in batches so that the tables' slots
    (outgrowing the caches on dense data) are fetched many adds ahead instead of waited for one at
    a time. Every add still happens, in order, before anything reads the counters (the end of the
    call, a verdict asked mid-record, a contact value's add whose answer is needed at once)."""
    cdef set header
    cdef list want, ignored, distinct, kinds, edm_kind
    cdef object edm
    cdef bint per_id
    cdef object strong_recs, person_recs, all_recs
    cdef set strong_ids, person_ids
    cdef Py_ssize_t strong_values, contact_values
    cdef bint ids_capped
    cdef list is_email
    cdef object evidence
    cdef bint ev_c                       # evidence is a precision.Evidence: its email() in C
    cdef PAdd pb[BATCH]                  # adds to Distinct tables not yet made (batch_add)
    cdef int npb
    cdef Info info                       # the patterns, for the deferred (lazy) entries


cdef object _scanner_mod = None


cdef RecEnv rec_env(sc):
    global _extract_fn, _deceased, _ESTIMATED_SALT, _IDS_CAP, _EST_MIN, _Evidence, _sq_want, _scanner_mod
    cdef RecEnv env = RecEnv.__new__(RecEnv)
    if _extract_fn is None:
        from sensor.detect import scanner as S
        from sensor.detect.precision import deceased, Evidence
        _extract_fn, _deceased, _ESTIMATED_SALT, _Evidence = S._extract, deceased, S._ESTIMATED, Evidence
        _IDS_CAP, _EST_MIN = S.RECORD_IDS_CAP, S.ESTIMATE_MIN_IDS
        _scanner_mod = S
    _sq_want = _scanner_mod.SAMPLES_PER_SIGNATURE     # read per call, as sc._sample reads it
    env.header = sc._header_sigs
    env.want = sc._want_sample
    env.ignored = sc._ignored
    env.distinct = sc._distinct
    env.kinds = sc._kindbits
    env.edm_kind = sc._edm_kind
    env.edm = sc._edm
    # estimate only in plain text (see the reference)
    env.per_id = bool(sc._estimate and sc._skind is None and sc._mode == "lines")
    env.strong_recs = sc._strong_recs
    env.person_recs = sc._person_recs
    env.all_recs = sc._all_recs
    env.strong_ids = sc._strong_ids
    env.person_ids = sc._person_ids
    env.ids_capped = sc._ids_capped
    env.is_email = sc._is_email
    env.evidence = sc._evidence
    env.ev_c = type(env.evidence) is _Evidence   # a subclass keeps its own email()
    env.info = sc._core.info
    return env


cdef int evidence_email(object ev, bytes v) except -1:
    """precision.Evidence.email without the Python frame (one call per new distinct email: on
    docs and source ~5,000 per 20 MB): the domain lowered in C (bytes.lower is ASCII-only too).
    tests/test_core_evidence.py holds it to the method on the same values."""
    cdef const char *p = PyBytes_AS_STRING(v)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(v)
    cdef Py_ssize_t at = rfind1(p, n, b'@', 0, n)
    cdef Py_ssize_t k, j = at + 1
    cdef bytes d = PyBytes_FromStringAndSize(NULL, n - j)
    cdef char *q = PyBytes_AS_STRING(d)
    cdef char c
    for k in range(n - j):
        c = p[j + k]
        q[k] = c + 32 if b'A' <= c <= b'Z' else c
    ev.emails += 1
    cdef dict domains = ev.domains
    if len(domains) < 4096 or d in domains:
        domains[d] = domains.get(d, 0) + 1
    return 0


def _evidence_email(ev, bytes v not None) -> None:
    """evidence_email for the tests."""
    evidence_email(ev, v)


cdef int count_contact(sc, RecEnv env, int si, const char *p, Py_ssize_t n, object v) except -1:
    """ExchangeScanner._count_contact: phones and emails count as distinct values only (the
    count kept in ``env`` until the call ends or a verdict is asked). ``v`` is None while the value
    is only ``p[:n]`` in the buffer: the bytes object is made only for a new email or a sample."""
    if env.ignored[si]:
        return 0
    if env.npb:
        batch_flush(env)                  # this add's answer is needed now: the earlier ones first
    cdef Py_hash_t hv = _Py_HashBytes(p, n) if v is None else PyObject_Hash(v)
    d = env.distinct[si]
    if (<Distinct>d).cadd(hv) == 1 if type(d) is Distinct else dadd(d, hv):
        env.contact_values += 1
        if env.is_email[si]:
            if v is None:
                v = PyBytes_FromStringAndSize(p, n)
            if env.ev_c:
                evidence_email(env.evidence, v)
            else:
                env.evidence.email(v)
    if env.want[si]:
        if v is None:
            v = PyBytes_FromStringAndSize(p, n)
        sc._sample(si, v)
    return 0


cdef int batch_add(RecEnv env, object counter, Py_hash_t h, int cat) except -1:
    """Add ``h`` to ``counter`` (DistinctCounter.add); a new value counts as ``cat``. The add to a
    :class:`Distinct` waits in the batch: only sums of the answers are kept, and the batch is made
    in order before anything reads the counters, so the counts are the reference's."""
    cdef PAdd *t
    if type(counter) is not Distinct:
        if dadd(counter, h):
            if cat == STRONG:
                env.strong_values += 1
            elif cat == CONTACT:
                env.contact_values += 1
        return 0
    if env.npb == BATCH:
        batch_flush(env)
    t = &env.pb[env.npb]
    t.d = <PyObject *>counter
    t.h = h
    t.m = mix64(<uint64_t>h)
    t.cat = cat
    env.npb += 1
    return 0


cdef inline int dfast(Distinct d, Py_hash_t h, uint64_t m) except -1:
    """Distinct.cadd with its common case inline (exact, a table, no growth due, below the cap, h not
    0) and the mixed hash already made: no call per add in the flush loop; anything else is cadd's."""
    cdef size_t j
    cdef Py_hash_t v
    if d.py is not None or h == 0 or d.tab == NULL or d.n >= d.cap \
            or <size_t>(d.n + 1) * 10 > (d.mask + 1) * 7:
        return d.cadd(h)
    j = <size_t>(m >> d.shift)
    v = d.tab[j]
    while v != 0:
        if v == h:
            return 0
        j = (j + 1) & d.mask
        v = d.tab[j]
    d.tab[j] = h
    d.n += 1
    return 1


cdef int batch_flush(RecEnv env) except -1:
    """The waiting adds, in order, each table slot fetched AHEAD adds before it is probed: on the
    dense breach CSV the eight tables (512 KiB each) miss the caches on nearly every add, and a
    prefetch one record ahead (~8 adds) was too close to help (measured: no change)."""
    cdef int n = env.npb, k
    cdef PAdd *pb = env.pb
    env.npb = 0
    for k in range(n if n < AHEAD else AHEAD):
        (<Distinct>pb[k].d).prefetch_m(pb[k].m)
    for k in range(n):
        if k + AHEAD < n:
            (<Distinct>pb[k + AHEAD].d).prefetch_m(pb[k + AHEAD].m)
        if dfast(<Distinct>pb[k].d, pb[k].h, pb[k].m) == 1:
            if pb[k].cat == STRONG:
                env.strong_values += 1
            elif pb[k].cat == CONTACT:
                env.contact_values += 1
    return 0


cdef int env_flush(sc, RecEnv env) except -1:
    """Everything deferred, into the scanner: before anything reads its counters."""
    batch_flush(env)
    if env.strong_values:
        sc._strong_values += env.strong_values
        env.strong_values = 0
    if env.contact_values:
        sc._contact_values += env.contact_values
        env.contact_values = 0
    return 0


def finish_record(sc) -> None:
    """ExchangeScanner._finish_record line for line (the rare precision paths call the same Python)."""
    r = sc._rec
    cdef RecEnv env
    if type(r) is not RecBuf:
        if r:
            raise CoreError("a record of the Python reference in the compiled loop")
        return
    if not (<RecBuf>r).n:
        return
    env = rec_env(sc)
    finish_clear(sc, env, <RecBuf>r, sc._rec_key, sc._rec_end)
    env_flush(sc, env)


cdef int finish_clear(sc, RecEnv env, RecBuf rec, object rec_key, object rec_end) except -1:
    """:func:`finish` on the open record, which is empty afterwards (also when finishing raised:
    the reference takes the record off the scanner first)."""
    try:
        finish(sc, env, rec.a, rec.n, rec_key, rec_end)
    finally:
        rec.clear()
    return 0


cdef list placed_list(const Ent *ents, const int *pbit, const Py_ssize_t *pidx, const Py_hash_t *phh, int npl,
                      dict extra):
    """The reference's ``placed`` list (bit, start, hash, raw) of the first ``npl`` placed values."""
    cdef list out = []
    cdef int j
    cdef Ent *t
    for j in range(npl):
        t = <Ent *>&ents[pidx[j]]
        if not t.has_h:
            raw = extra[pidx[j]]
        else:
            raw = ent_raw(t)
        out.append((pbit[j], t.start, phh[j], raw))
    return out


DEF MAX_STRONG = 64


cdef int finish(sc, RecEnv env, Ent *ents, Py_ssize_t nrec, object rec_key, object rec_end) except -1:
    """The body of :func:`finish_record` on the record ``ents[:nrec]`` whose key and successor are
    ``rec_key`` / ``rec_end``: the scanner's ``_rec_key`` / ``_rec_end`` are set to them only where
    the reference's Python reads them (obituary and home checks). The entries are C structs; Python
    objects are made only for what Python is handed (samples, EDM values, the rare paths)."""
    cdef Ent *t
    cdef Py_ssize_t x
    cdef int uncond = 0, cats = 0, kind = 0, si, cat, rmask, k, j, best, nbest, c
    cdef bint ctx
    # strong values of the record for the estimate (the reference's per_id dict of sets), in C
    cdef int psi[MAX_STRONG]
    cdef Py_hash_t ph[MAX_STRONG]
    cdef int np = 0
    cdef dict per = None
    cdef Py_hash_t hv, h
    cdef bint any_ctx = False
    # values with a place bit (names, streets): for the home check, which few records need
    cdef int pbit[MAX_STRONG]
    cdef Py_ssize_t pidx[MAX_STRONG]
    cdef Py_hash_t phh[MAX_STRONG]
    cdef int npl = 0
    cdef list placed = None
    cdef dict extra = None
    for x in range(nrec):
        if ents[x].ctx:
            uncond |= ents[x].cat
            any_ctx = True
    if not any_ctx:
        return 0        # every entry counts only through one in context: none here (lines of dates)
    cdef set header = env.header
    cdef list want = env.want
    cdef list ignored = env.ignored
    cdef list distinct = env.distinct
    cdef list kinds = env.kinds
    cdef Py_hash_t hc[MAX_STRONG]     # the record's value hashes (its identity), in C while they fit
    cdef Py_hash_t fp                 # the record's identity
    cdef int nh = 0
    cdef list hashes = None
    cdef list edm_kind = env.edm_kind
    edm = env.edm
    edm_vals = [] if edm is not None else None
    cdef bint per_id = env.per_id
    for x in range(nrec):
        t = &ents[x]
        si = t.si
        cat = t.cat
        ctx = t.ctx
        rmask = t.rmask
        if not ctx and not (rmask & uncond and si not in header):
            continue
        if ignored[si]:
            continue
        if not ctx and sc._org_field(t.start):
            continue
        t = &ents[x]
        if not t.has_h:                   # deferred: extract and validate now
            raw = _extract_fn(env.info.pats[t.pat], <object>t.obj, t.le - t.cut)
            if raw is None:
                continue
            h = PyObject_Hash(raw)
        elif t.in_buf:
            h = t.h
            # still in its chunk: made only for what reads it here (EDM, a sample); placed values
            # are made by placed_list when the home check asks
            raw = ent_raw(t) if want[si] or (edm_vals is not None and edm_kind[si] is not None) else None
        else:
            h = t.h
            raw = <object>t.obj if t.obj != NULL else None
        if edm_vals is not None and edm_kind[si] is not None and raw is not None:
            edm_vals.append(edm_kind[si]); edm_vals.append(raw)    # flat: kind, raw (sensor/edm: no tuple per value)
        batch_add(env, distinct[si], h, cat)
        if raw is not None and want[si]:
            sc._sample(si, raw)
        cats |= cat
        if cat == STRONG and per_id:
            if np < MAX_STRONG:
                psi[np] = si
                ph[np] = h
                np += 1
            else:                         # more strong values than the C arrays hold: the reference's dict
                if per is None:
                    per = {}
                    for j in range(np):
                        per.setdefault(psi[j], set()).add(ph[j])
                per.setdefault(si, set()).add(h)
        k = kinds[si]
        kind |= k
        if k & 5:
            t = &ents[x]
            if placed is None and npl < MAX_STRONG:
                pbit[npl] = k
                pidx[npl] = x
                phh[npl] = h
                if not t.has_h:
                    if extra is None:
                        extra = {}
                    extra[x] = raw
                npl += 1
            else:
                if placed is None:
                    placed = placed_list(ents, pbit, pidx, phh, npl, extra)
                placed.append((k, t.start, h, ent_raw(t) if t.has_h and t.in_buf and raw is None else raw))
        if hashes is None and nh < MAX_STRONG:
            hc[nh] = h
        else:
            if hashes is None:
                hashes = [hc[j] for j in range(nh)]
            hashes.append(h)
        nh += 1
    if edm_vals and edm.record(edm_vals):
        env_flush(sc, env)                # the verdict reads the counts
        sc._decide()
    if not nh:
        return 0
    cdef bint is_strong = (cats & STRONG) and (cats & 2)
    cdef bint is_person = kind & 3 == 3
    if is_person and not is_strong:
        sc._rec_key = rec_key
        sc._rec_end = rec_end
        text = sc._record_text()
        sc._rec_end = None
        if _deceased(text):
            return 0
    home = None
    if kind & 5 == 5 and not is_person:
        sc._rec_key = rec_key
        sc._rec_end = rec_end
        try:
            home = sc._home_of(placed if placed is not None else placed_list(ents, pbit, pidx, phh, npl, extra))
        finally:
            sc._rec_end = None
    if is_strong and np:
        ids = None
        if per is not None:
            ids = max(per.values(), key=len)
        else:
            # the first signature (in order of appearance) with the most distinct strong values
            best, nbest = -1, 0
            for k in range(np):
                if any_before(psi, k, psi[k]):
                    continue              # counted with its first appearance
                c = 0
                for j in range(k, np):
                    if psi[j] == psi[k] and not seen_before(psi, ph, k, j):
                        c += 1
                if c > nbest:
                    best, nbest = psi[k], c
            if nbest >= _EST_MIN:
                ids = set()
                for k in range(np):
                    if psi[k] == best:
                        ids.add(ph[k])    # the reference's set, filled in the same order
        if ids and len(ids) >= _EST_MIN:
            batch_flush(env)              # the adds below are Python's: the waiting ones first
            for hv in ids:
                fp = hash((_ESTIMATED_SALT, hv))
                sc._est_recs.add(fp)
                sc._strong_recs.add(fp)
                sc._all_recs.add(fp)
                keep_id(sc, env, sc._strong_ids, fp)
            return 0
    if is_strong or is_person or home is not None:
        fp = hash(tuple(sorted(hashes))) if hashes is not None else sorted_tuple_hash(hc, nh)
        if is_strong:
            batch_add(env, env.strong_recs, fp, 0)
            batch_add(env, env.all_recs, fp, 0)
            keep_id(sc, env, env.strong_ids, fp)
        if is_person:
            batch_add(env, env.person_recs, fp, 0)
            if not is_strong:             # (the reference adds it again: a no-op, exact or estimated)
                batch_add(env, env.all_recs, fp, 0)
            keep_id(sc, env, env.person_ids, fp)
        elif home is not None:
            if is_strong:
                batch_add(env, env.person_recs, fp, 0)
                keep_id(sc, env, env.person_ids, fp)
            else:
                sc._homes.add(fp, home[0], home[1])
                keep_id(sc, env, sc._home_ids, fp)
    return 0


cdef Py_hash_t int_hash(Py_hash_t v) noexcept nogil:
    """``hash(int(v))`` (CPython: |v| modulo 2**61 - 1, the sign kept, -1 made -2)."""
    cdef uint64_t x = <uint64_t>v if v >= 0 else (<uint64_t>0) - <uint64_t>v
    # x mod 2**61 - 1 without a division: x = q * 2**61 + low is q + low modulo it (q <= 7)
    cdef uint64_t m = (x & 0x1FFFFFFFFFFFFFFFULL) + (x >> 61)
    if m >= 0x1FFFFFFFFFFFFFFFULL:
        m -= 0x1FFFFFFFFFFFFFFFULL
    cdef Py_hash_t r = <Py_hash_t>m
    if v < 0:
        r = -r
    return -2 if r == -1 else r


cdef Py_hash_t sorted_tuple_hash(Py_hash_t *a, int n) noexcept nogil:
    """``hash(tuple(sorted(a[:n])))`` without the objects: CPython 3.11's tuplehash (xxHash lanes)
    over the ints' hashes (tests/test_core_som.py holds it to the real thing)."""
    cdef int k, j
    cdef Py_hash_t x
    cdef uint64_t acc = 2870177450012600261ULL, lane
    cdef int64_t b8[8]
    if 2 <= n <= 8:                       # a record's handful: a sorting network, padded with the max
        for k in range(8):
            b8[k] = a[k] if k < n else INT64_MAX
        dlp_sort8(b8)                     # (a real INT64_MAX sorts among the pads: equal values alike)
        for k in range(n):
            a[k] = b8[k]
    else:
        for k in range(1, n):             # insertion sort
            x = a[k]
            j = k - 1
            while j >= 0 and a[j] > x:
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = x
    for k in range(n):
        lane = <uint64_t>int_hash(a[k])
        acc += lane * 14029467366897019727ULL
        acc = (acc << 31) | (acc >> 33)
        acc *= 11400714785074694791ULL
    acc += (<uint64_t>n) ^ (2870177450012600261ULL ^ 3527539ULL)
    if acc == <uint64_t>-1:
        return 1546275796
    return <Py_hash_t>acc


def tuple_hash_of_sorted(list hashes) -> int:
    """:func:`sorted_tuple_hash` for tests (at most 64 hashes)."""
    cdef Py_hash_t a[MAX_STRONG]
    cdef int n = len(hashes), k
    assert n <= MAX_STRONG
    for k in range(n):
        a[k] = hashes[k]
    return sorted_tuple_hash(a, n)


cdef inline bint any_before(const int *psi, int k, int si) noexcept nogil:
    cdef int j
    for j in range(k):
        if psi[j] == si:
            return True
    return False


cdef inline bint seen_before(const int *psi, const Py_hash_t *ph, int k, int j) noexcept nogil:
    """Is value ``j`` (signature ``psi[j]``) a repeat of an earlier value of that signature from ``k`` on?"""
    cdef int x
    for x in range(k, j):
        if psi[x] == psi[j] and ph[x] == ph[j]:
            return True
    return False


# first sizes of the per-exchange C arrays (tests/test_core_memory.py reads them)
FIRST_SIZES = {"hits": HITS_FIRST, "hit_bytes": sizeof(Hit), "events": EV_FIRST * sizeof(Ev),
               "adds": ADDS_FIRST * sizeof(PAdd), "cut_context": CUT_CTX}
