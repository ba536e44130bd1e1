# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled EDM matcher: :class:`sensor.edm.match.EdmMatcher` with the per-value path in C.

Why: on dense content every record is a lookup. The Python matcher spent ~7 us a record in
interpreted code (grouping, bytes normalisers, four ``hashlib`` calls per HMAC, ``bisect``, the
per-row bookkeeping): it halved the scan. Here the same steps run in C, in the same order, on the
same batches of records (64, or fewer when the verdict, counts or rows are read):

- normalisation of the hot kinds on their ASCII spellings (identifiers, names, addresses, the
  numeric date spellings). Anything else (non-ASCII text, spelled-out months, e-mail, phone) calls
  the Python bytes normaliser of :mod:`sensor.edm.normalise`, so both matchers always agree on the
  canonical bytes;
- HMAC-SHA256 from the key's inner and outer chaining states saved once: a short value's padded
  blocks are built here and compressed with ``SHA256_Transform`` (OpenSSL libcrypto; one
  compression per side for most values), longer ones go through ``SHA256_Update/Final``;
- the bucketed lookup on the index (directory, then a binary search). A lookup is two or three
  dependent cache misses, so the values of a record's first kinds (while most values miss: as
  many as the filter must reject for the record to be rejected, the kinds present - ``min_fields``
  + 1) are hashed when the record is handed over, and the lines
  of the whole batch are fetched in stages (filter blocks, directory entries, buckets, row ids):
  the batch's misses overlap, a record waits on memory about once per batch;
- a membership filter per field in front of the index (used while most values miss it), the
  fields copied to huge pages at load, and only ``min_fields`` kinds hashed ahead while most values
  hit: see ``docs/benchmarks.md`` (h/edmf) for what each buys;
- the per-row counting of :meth:`EdmMatcher._lookup`, with the same early exits and the same order
  (so the same row ids reach ``ROW_CAP`` first).

No Python object is made per record: the queued values are held by a reference each, matched row
ids are kept in a C table per index (a set is made when ``rows`` is read).
``tests/test_edm_compiled.py`` holds both matchers to identical counts and rows.
"""
cimport cython
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp, memset
from libc.stdint cimport uint64_t, uint32_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from cpython.object cimport PyObject

cdef extern from "Python.h":
    void _incref "Py_INCREF"(PyObject *o)
    void _decref "Py_DECREF"(PyObject *o)
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE, PyTuple_GET_ITEM
from cpython.list cimport PyList_GET_ITEM

cdef extern from "openssl/sha.h":
    ctypedef struct SHA256_CTX:
        unsigned int h[8]     # the chaining state (the rest of the struct is OpenSSL's)
    int SHA256_Init(SHA256_CTX *c) nogil
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t n) nogil
    int SHA256_Final(unsigned char *md, SHA256_CTX *c) nogil
    void SHA256_Transform(SHA256_CTX *c, const unsigned char *data) nogil

cdef extern from *:
    """
    #define dlp_prefetch(p) __builtin_prefetch(p)
    """
    void dlp_prefetch(const void *p) nogil

cdef extern from "stdlib.h":
    int posix_memalign(void **memptr, size_t alignment, size_t size) nogil

cdef extern from "sys/mman.h":
    int madvise(void *addr, size_t length, int advice) nogil
    int MADV_HUGEPAGE
    int MADV_DONTNEED

cdef extern from "openssl/opensslv.h":
    const char *OPENSSL_VERSION_TEXT

# normaliser codes (sensor.edm.normalise.bytes_normaliser)
DEF N_IDENT = 0
DEF N_ADDRESS = 1
DEF N_NAME = 2
DEF N_DATE = 3
DEF N_PYTHON = 4
DEF MAX_NAME_TOKENS = 32
# a value's state instead of a bucket: C constants (a DEF this large is a Python int, and every
# comparison with it made and compared Python objects: ~0.3 us a record, found with perf)
cdef extern from *:
    """
    #define DLP_V_NONE 0xFFFFFFFFFFFFFFFFull
    #define DLP_V_LAZY 0xFFFFFFFFFFFFFFFEull
    #define DLP_V_DONE 0xFFFFFFFFFFFFFFFDull
    """
    const uint64_t NONE "DLP_V_NONE"
    const uint64_t LAZY "DLP_V_LAZY"
    const uint64_t DONE "DLP_V_DONE"
DEF KIND_CACHE = 32
DEF FILTER_BITS = 10          # filter bits per hash of the index (~1 % false positives)


cdef int _ahead = 1
cdef int _filter = 1
cdef int _pardir = 0
cdef int _copy = 1
cdef int _lean = 1
cdef int _short = 1


def set_short(int on) -> None:
    """Plans made from now on hash short values from the saved SHA-256 chaining states (1, default)
    or through SHA256_Update/Final (0). For the tests and the benchmark's comparison: the same hashes."""
    global _short
    _short = on


def set_lean(int on) -> None:
    """Hash ahead only the kinds a record needs (1, default): min_fields kinds while most values hit,
    else the kinds present - min_fields + 1 (what the filter must reject); or min_fields + 1 either
    way (0). For the tests and the benchmark's comparison: the results are the same."""
    global _lean
    _lean = on


def set_copy(int on) -> None:
    """Plans made from now on copy the fields to huge pages (1, default) or read the mapping (0).
    For the benchmark's comparison only."""
    global _copy
    _copy = on


def set_pardir(int on) -> None:
    """Fetch a value's directory entry together with its filter block (1) or only once the filter
    passed it (0, default: with a batch in flight the latency is hidden either way, and a directory
    line fetched for a value the filter rejects only evicts the scanner's own tables; in the scan
    the two measure alike within the noise of a loaded machine). For the benchmark's comparison only."""
    global _pardir
    _pardir = on


def set_ahead(int on) -> None:
    """Hash every value of a record before its lookups and fetch the buckets ahead (1, default) or
    hash lazily in lookup order (0). For the benchmark's comparison only."""
    global _ahead
    _ahead = on


def set_filter(int on) -> None:
    """Check the in-memory membership filter before the mapped index while most values miss it (1,
    default), always (2: the tests) or never (0: the benchmark's comparison). The results are the
    same."""
    global _filter
    _filter = on


# -- the membership filter ------------------------------------------------------------------------
# A split-block Bloom filter (the Parquet layout): 32-byte blocks of eight 32-bit words, one bit set
# in each word. The block comes from the hash's top 32 bits, the bits from its low 32 bits times
# eight odd salts. Built at load from the index's own 64-bit hashes, so it has no false negatives:
# a value it rejects is not in the index, and the results cannot change. Why: a value of a dense
# file is mostly not in the index (all of them for other people's records); rejecting it costs one
# cache line in a filter of ~1.2 bytes per row and field instead of two or three misses in the
# mapping (directory, bucket, row ids) that also evict the scanner's own tables.

cdef uint32_t _SALT[8]
_SALT[:] = [0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947,
            0x5c6bfb31]


cdef inline const uint32_t *_fblock(const uint32_t *flt, uint64_t nblocks, uint64_t h) noexcept nogil:
    return flt + (((h >> 32) * nblocks) >> 32) * 8


cdef inline bint _fhas(const uint32_t *blk, uint64_t h) noexcept nogil:
    cdef uint32_t lo = <uint32_t>h
    cdef int i
    for i in range(8):
        if not (blk[i] >> ((lo * _SALT[i]) >> 27)) & 1:
            return False
    return True


cdef inline void _fadd(uint32_t *flt, uint64_t nblocks, uint64_t h) noexcept nogil:
    cdef uint32_t *blk = flt + (((h >> 32) * nblocks) >> 32) * 8
    cdef uint32_t lo = <uint32_t>h
    cdef int i
    for i in range(8):
        blk[i] |= (<uint32_t>1) << ((lo * _SALT[i]) >> 27)


def version() -> str:
    """The libcrypto the module was built against (for the startup log)."""
    return (<bytes>OPENSSL_VERSION_TEXT).decode("ascii", "replace")


cdef struct KField:
    const uint32_t *dir
    const uint64_t *hs
    const uint32_t *ids
    int shift                 # 64 - bits (64: one bucket)
    void *arena               # private huge-page copy of dir, hs, ids (owned; NULL: the mapping)
    uint32_t *flt             # membership filter (owned; NULL: none, every value goes to the index)
    uint64_t fblocks          # its 32-byte blocks
    int norm
    int kind                  # global kind slot
    SHA256_CTX inner          # inner state after the key's inner pad and "kind:"
    unsigned int ih[8]        # the chaining state after the inner pad alone
    unsigned char pre[32]     # "kind:" (npre bytes; 0: the short path is not used for this kind)
    int npre


cdef struct IPlan:
    SHA256_CTX outer          # outer state after the index key's outer pad
    unsigned int oh[8]        # its chaining state
    int need
    int nk                    # kinds this index holds, in lookup order
    KField *f
    int *fmap                 # global kind slot -> position in f (-1: not held)


cdef inline uint64_t _hmac(const SHA256_CTX *inner, const SHA256_CTX *outer,
                           const unsigned char *v, Py_ssize_t n) noexcept nogil:
    cdef SHA256_CTX c
    cdef unsigned char d[32]
    memcpy(&c, inner, sizeof(SHA256_CTX))
    SHA256_Update(&c, v, <size_t>n)
    SHA256_Final(d, &c)
    memcpy(&c, outer, sizeof(SHA256_CTX))
    SHA256_Update(&c, d, 32)
    SHA256_Final(d, &c)
    cdef uint64_t h = 0
    cdef int i
    for i in range(7, -1, -1):
        h = (h << 8) | d[i]   # little-endian, as int.from_bytes(digest[:8], "little")
    return h


cdef inline uint32_t _bswap32(uint32_t x) noexcept nogil:
    return ((x >> 24) | ((x >> 8) & 0xFF00) | ((x << 8) & 0xFF0000) | (x << 24))


cdef inline uint64_t _hmac_short(const KField *f, const IPlan *ip, const unsigned char *v,
                                 Py_ssize_t n) noexcept nogil:
    """_hmac for a value whose "kind:" + value + padding fits two SHA-256 blocks: the padded blocks
    built here and compressed from the saved chaining states (SHA256_Transform), without the
    context copies, buffering and clearing of SHA256_Update/Final. The same digest:
    tests/test_edm_compiled.py holds every value to the Python Hasher, with this path and without."""
    cdef Py_ssize_t k = f.npre, t = k + n, nb, i
    cdef uint64_t bits
    cdef SHA256_CTX c
    cdef unsigned char blk[128]
    if k == 0 or t + 9 > 128:
        return _hmac(&f.inner, &ip.outer, v, n)
    memcpy(blk, f.pre, k)
    memcpy(blk + k, v, n)
    blk[t] = 0x80
    nb = 64 if t + 9 <= 64 else 128
    memset(blk + t + 1, 0, nb - t - 9)
    bits = <uint64_t>(64 + t) * 8            # the inner pad's block, "kind:" and the value
    for i in range(8):
        blk[nb - 1 - i] = <unsigned char>(bits >> (8 * i))
    memcpy(c.h, f.ih, 32)
    SHA256_Transform(&c, blk)
    if nb == 128:
        SHA256_Transform(&c, blk + 64)
    for i in range(8):                        # the inner digest, big-endian, then the outer padding
        (<uint32_t *>blk)[i] = _bswap32(c.h[i])
    blk[32] = 0x80
    memset(blk + 33, 0, 29)
    blk[62] = 0x03                            # 768 bits: the outer pad's block and the digest
    blk[63] = 0x00
    memcpy(c.h, ip.oh, 32)
    SHA256_Transform(&c, blk)
    # the first 8 digest bytes read little-endian, as int.from_bytes(digest[:8], "little")
    return <uint64_t>_bswap32(c.h[0]) | (<uint64_t>_bswap32(c.h[1]) << 32)


# -- normalisers: exactly the bytes of sensor.edm.normalise for the inputs they accept ------------
# Each returns the output length, or -1 (not a value of the kind: None), or -2 (not handled here:
# ask the Python normaliser).

cdef inline bint _is_alnum(unsigned char c) noexcept nogil:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122)


cdef inline unsigned char _up(unsigned char c) noexcept nogil:
    return c - 32 if 97 <= c <= 122 else c


cdef Py_ssize_t _n_ident(const unsigned char *s, Py_ssize_t n, unsigned char *out) noexcept nogil:
    # identifier_bytes: raw.translate(_UPPER, _NON_ALNUM) or None (every byte, not only ASCII)
    cdef Py_ssize_t i, o = 0
    for i in range(n):
        if _is_alnum(s[i]):
            out[o] = _up(s[i])
            o += 1
    return o if o else -1


cdef inline bint _is_ascii(const unsigned char *s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] >= 128:
            return False
    return True


cdef Py_ssize_t _n_name(const unsigned char *s, Py_ssize_t n, unsigned char *out) noexcept nogil:
    # name(): upper case, apostrophes dropped, tokens = runs of A-Z longer than one letter, sorted
    cdef Py_ssize_t i, o
    cdef Py_ssize_t st[MAX_NAME_TOKENS]
    cdef Py_ssize_t ln[MAX_NAME_TOKENS]
    cdef int nt = 0, a, b
    cdef unsigned char c
    cdef Py_ssize_t run = 0
    if not _is_ascii(s, n):
        return -2
    # compact first: upper-cased letters, apostrophes removed, anything else one separator (0)
    o = 0
    for i in range(n):
        c = s[i]
        if c == 39:           # "'" is removed before splitting: O'BRIEN -> OBRIEN
            continue
        c = _up(c)
        out[o] = c if 65 <= c <= 90 else 0
        o += 1
    # tokens over the compacted bytes (in place: out[0:o])
    i = 0
    while i < o:
        if out[i] == 0:
            i += 1
            continue
        run = i
        while i < o and out[i] != 0:
            i += 1
        if i - run > 1:
            if nt == MAX_NAME_TOKENS:
                return -2
            st[nt] = run
            ln[nt] = i - run
            nt += 1
    if nt == 0:
        return -1
    # insertion sort of the token indexes, bytewise (ASCII: the order of str)
    cdef int order[MAX_NAME_TOKENS]
    cdef int k, m, cmp
    for k in range(nt):
        order[k] = k
    for k in range(1, nt):
        m = order[k]
        a = k - 1
        while a >= 0:
            b = order[a]
            cmp = memcmp(out + st[b], out + st[m], ln[b] if ln[b] < ln[m] else ln[m])
            if cmp > 0 or (cmp == 0 and ln[b] > ln[m]):
                order[a + 1] = b
                a -= 1
            else:
                break
        order[a + 1] = m
    # join after the compacted bytes, then move to the front
    cdef unsigned char *dst = out + o
    cdef Py_ssize_t w = 0
    for k in range(nt):
        if k:
            dst[w] = 32
            w += 1
        memcpy(dst + w, out + st[order[k]], ln[order[k]])
        w += ln[order[k]]
    memcpy(out, dst, w)
    return w


cdef inline bint _addr_sep(unsigned char c) noexcept nogil:
    # _PUNCT_BLANK_B maps ASCII punctuation and \t \r \n \x1c-\x1f to a blank; bytes.split() then
    # splits on blank, \t \n \r \x0b \x0c
    if c == 32 or 9 <= c <= 13 or 28 <= c <= 31:
        return True
    return (33 <= c <= 47) or (58 <= c <= 64) or (91 <= c <= 96) or (123 <= c <= 126)


cdef const char *_SUF_K[17]
cdef const char *_SUF_V[17]
_SUF_K[:] = [b"STREET", b"AVENUE", b"AV", b"ROAD", b"BOULEVARD", b"DRIVE", b"LANE", b"COURT", b"WAY",
             b"PLACE", b"CIRCLE", b"TERRACE", b"PARKWAY", b"HIGHWAY", b"TRAIL", b"SQUARE", NULL]
_SUF_V[:] = [b"ST", b"AVE", b"AVE", b"RD", b"BLVD", b"DR", b"LN", b"CT", b"WAY", b"PL", b"CIR", b"TER",
             b"PKWY", b"HWY", b"TRL", b"SQ", NULL]
cdef const char *_DIR_K[5]
cdef const char *_DIR_V[5]
_DIR_K[:] = [b"NORTH", b"SOUTH", b"EAST", b"WEST", NULL]
_DIR_V[:] = [b"N", b"S", b"E", b"W", NULL]


# The word tables indexed by first letter and length (a chain per slot): a street token is looked
# up with one or two memcmp instead of a walk over the table (perf: the walk was ~40 % of the
# address normaliser, itself the matcher's costliest normaliser on records of other people)
DEF T_SUF = 0                 # suffix word -> abbreviation
DEF T_DIR = 1                 # direction word -> letter
DEF T_ABBR = 2                # an abbreviation itself
cdef const char **_WK[3]
cdef const char **_WV[3]
cdef signed char _whead[3][26][10]
cdef signed char _wnext[3][20]
cdef unsigned char _wlen[3][20]


cdef void _index_words(int tab, const char **keys, const char **vals) noexcept:
    cdef int i = 0, n, c
    _WK[tab] = keys
    _WV[tab] = vals
    while keys[i] != NULL:
        n = 0
        while keys[i][n] != 0:
            n += 1
        c = <unsigned char>keys[i][0] - 65
        _wlen[tab][i] = n
        # appended at the chain's end: the first of equal words wins, as in table order
        _wnext[tab][i] = -1
        if _whead[tab][c][n] < 0:
            _whead[tab][c][n] = i
        else:
            c = _whead[tab][c][n]
            while _wnext[tab][c] >= 0:
                c = _wnext[tab][c]
            _wnext[tab][c] = i
        i += 1


memset(_whead, 0xFF, sizeof(_whead))
_index_words(T_SUF, _SUF_K, _SUF_V)
_index_words(T_DIR, _DIR_K, _DIR_V)
_index_words(T_ABBR, _SUF_V, _SUF_V)


cdef inline const char *_lookup_word(const unsigned char *t, Py_ssize_t n, int tab) noexcept nogil:
    cdef int i
    if n < 1 or n > 9 or not (65 <= t[0] <= 90):
        return NULL                             # every word of the tables: 1-9 capital letters
    i = _whead[tab][t[0] - 65][n]
    while i >= 0:
        if memcmp(_WK[tab][i], t, n) == 0:
            return _WV[tab][i]
        i = _wnext[tab][i]
    return NULL


cdef inline Py_ssize_t _put(unsigned char *out, Py_ssize_t w, const unsigned char *t, Py_ssize_t n,
                            const char *sub) noexcept nogil:
    cdef Py_ssize_t k = 0
    if w:
        out[w] = 32
        w += 1
    if sub != NULL:
        while sub[k] != 0:
            out[w] = <unsigned char>sub[k]
            w += 1
            k += 1
        return w
    memcpy(out + w, t, n)
    return w + n


cdef Py_ssize_t _n_address(const unsigned char *s, Py_ssize_t n, unsigned char *out,
                           unsigned char *tmp) noexcept nogil:
    # address_bytes (ASCII): the street line, suffixes and a leading direction abbreviated
    cdef Py_ssize_t i = 0, e, ts, w = 0
    cdef int nt = 0
    cdef const char *sub
    if not _is_ascii(s, n):
        return -2
    while i < n and (s[i] == 32 or 9 <= s[i] <= 13 or 28 <= s[i] <= 31):
        i += 1                                  # lstrip(_BLANKS)
    if i >= n or not (48 <= s[i] <= 57):
        return -1
    e = i
    while e < n and s[e] != 44:                 # split(b",", 1)[0]
        e += 1
    for ts in range(i, e):                      # translate: upper case (a NUL byte is a letter here)
        tmp[ts] = _up(s[ts])
    while i < e:
        if _addr_sep(tmp[i]):
            i += 1
            continue
        ts = i
        while i < e and not _addr_sep(tmp[i]):
            i += 1
        # token tmp[ts:i]
        if nt == 0:
            if not (48 <= tmp[ts] <= 57):
                return -1
            w = _put(out, w, tmp + ts, i - ts, NULL)
        elif nt == 1:
            sub = _lookup_word(tmp + ts, i - ts, T_SUF)
            if sub == NULL:
                sub = _lookup_word(tmp + ts, i - ts, T_DIR)
            w = _put(out, w, tmp + ts, i - ts, sub)
        else:
            sub = _lookup_word(tmp + ts, i - ts, T_SUF)
            w = _put(out, w, tmp + ts, i - ts, sub)
            if sub != NULL or _lookup_word(tmp + ts, i - ts, T_ABBR) != NULL:
                nt += 1
                break                           # the street line ends at its suffix
        nt += 1
    if nt < 2:
        return -1
    return w


cdef inline int _digits(const unsigned char *s, Py_ssize_t n) noexcept nogil:
    cdef int v = 0
    cdef Py_ssize_t i
    for i in range(n):
        v = v * 10 + (s[i] - 48)
    return v


cdef Py_ssize_t _iso(int y, int m, int d, unsigned char *out) noexcept nogil:
    cdef int dim
    if y < 1 or y > 9999 or m < 1 or m > 12 or d < 1:
        return -1
    if m == 2:
        dim = 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    elif m == 4 or m == 6 or m == 9 or m == 11:
        dim = 30
    else:
        dim = 31
    if d > dim:
        return -1
    out[0] = 48 + y // 1000
    out[1] = 48 + y // 100 % 10
    out[2] = 48 + y // 10 % 10
    out[3] = 48 + y % 10
    out[4] = 45
    out[5] = 48 + m // 10
    out[6] = 48 + m % 10
    out[7] = 45
    out[8] = 48 + d // 10
    out[9] = 48 + d % 10
    return 10


cdef Py_ssize_t _n_date(const unsigned char *s, Py_ssize_t n, unsigned char *out) noexcept nogil:
    # date() on the spellings made of digits and / . - only (US m/d/y, ISO y-m-d, compact yyyymmdd);
    # anything else (blanks, month names, a time after the date) goes to the Python normaliser
    cdef Py_ssize_t i
    cdef Py_ssize_t p[3]
    cdef Py_ssize_t l[3]
    cdef int ng = 0
    cdef Py_ssize_t st = 0
    cdef unsigned char c
    if n == 0 or n > 16:
        return -2
    for i in range(n):
        c = s[i]
        if 48 <= c <= 57:
            continue
        if c == 47 or c == 46 or c == 45:
            if ng == 2:
                return -2
            p[ng] = st
            l[ng] = i - st
            ng += 1
            st = i + 1
            continue
        return -2
    p[ng] = st
    l[ng] = n - st
    if ng == 0:
        if n == 8:                              # _D_COMPACT
            return _iso(_digits(s, 4), _digits(s + 4, 2), _digits(s + 6, 2), out)
        return -1
    if ng != 2:
        return -1
    if 1 <= l[0] <= 2 and 1 <= l[1] <= 2 and l[2] == 4:      # _D_NUM: month/day/year
        return _iso(_digits(s + p[2], 4), _digits(s + p[0], l[0]), _digits(s + p[1], l[1]), out)
    if l[0] == 4 and 1 <= l[1] <= 2 and 1 <= l[2] <= 2:      # _D_ISO
        return _iso(_digits(s, 4), _digits(s + p[1], l[1]), _digits(s + p[2], l[2]), out)
    return -1


# -- growable scratch ------------------------------------------------------------------------------
def normalise_c(int code, bytes raw):
    """The C normaliser ``code`` (0 identifier, 1 address, 2 name, 3 date) on ``raw``: canonical
    bytes, None (not a value of the kind) or NotImplemented (left to the Python normaliser)."""
    cdef Py_ssize_t n = len(raw), r = -2
    cdef bytearray out = bytearray(2 * n + 64)
    cdef bytearray tmp = bytearray(n + 1)
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(raw)
    cdef unsigned char *o = <unsigned char *>(<char *>out)
    if code == N_IDENT:
        r = _n_ident(s, n, o)
    elif code == N_NAME:
        r = _n_name(s, n, o)
    elif code == N_ADDRESS:
        r = _n_address(s, n, o, <unsigned char *>(<char *>tmp))
    elif code == N_DATE:
        r = _n_date(s, n, o)
    if r == -2:
        return NotImplemented
    return None if r < 0 else bytes(out[:r])


cdef struct Buf:
    void *p
    Py_ssize_t cap


cdef int _grow(Buf *b, Py_ssize_t need) except -1:
    cdef void *q
    if need <= b.cap:
        return 0
    need = max(need, 2 * b.cap, 64)
    q = realloc(b.p, need)
    if q == NULL:
        raise MemoryError()
    b.p = q
    b.cap = need
    return 0


cdef void _drop(const void *p, size_t n) noexcept nogil:
    """MADV_DONTNEED on the whole 4 KB pages inside [p, p + n) of the read-only mapping."""
    cdef size_t a = (<size_t>p + 4095) & ~(<size_t>4095)
    cdef size_t e = (<size_t>p + n) & ~(<size_t>4095)
    if e > a:
        madvise(<void *>a, e - a, MADV_DONTNEED)


cdef class Plan:
    """What a lookup needs from an :class:`~sensor.edm.match.EdmSet`, resolved once: per index its
    ``min_fields`` and, per kind in lookup order, pointers into the mapped field, the normaliser
    and the HMAC inner state; the outer state. Holds the index's buffers while it lives."""
    cdef IPlan *ix
    cdef int nix
    cdef int nkinds
    cdef public int min_need
    cdef dict kind_slot              # kind -> slot
    cdef list fallback               # slot -> Python bytes normaliser
    cdef list _keep                  # the typed views (buffer exports) the pointers point into
    cdef list names                  # index names
    cdef public Py_ssize_t filter_bytes  # the membership filters' memory
    cdef public Py_ssize_t copy_bytes    # the huge-page copies of the fields

    def __cinit__(self):
        self.ix = NULL
        self.nix = 0

    def __init__(self, edm, codes: dict, fallbacks: dict):
        """``codes``: kind -> normaliser code; ``fallbacks``: kind -> Python bytes normaliser."""
        cdef bytes k
        cdef unsigned char pad[64]
        cdef unsigned char ipad[64]
        cdef unsigned char opad[64]
        cdef SHA256_CTX inner, c
        cdef int i, j, n
        cdef const unsigned int[::1] dv, iv
        cdef const unsigned long long[::1] hv
        cdef bytes pre
        self.kind_slot = {kd: s for s, kd in enumerate(edm.order)}
        self.nkinds = len(edm.order)
        self.fallback = [fallbacks[kd] for kd in edm.order]
        self.min_need = edm.min_need
        self._keep = []
        self.names = [ix.name for ix in edm.indexes]
        n = len(edm.indexes)
        self.ix = <IPlan *>malloc(max(n, 1) * sizeof(IPlan))
        if self.ix == NULL:
            raise MemoryError()
        for i in range(n):
            self.ix[i].f = NULL
            self.ix[i].fmap = NULL
            self.ix[i].nk = 0
        self.filter_bytes = 0
        self.copy_bytes = 0
        self.nix = n
        for i, ix in enumerate(edm.indexes):
            k = bytes(ix.key)                   # the HMAC pads of this index's key (RFC 2104)
            if len(k) > 64:
                import hashlib
                k = hashlib.sha256(k).digest()
            memset(pad, 0, 64)
            memcpy(pad, PyBytes_AS_STRING(k), len(k))
            for j in range(64):
                ipad[j] = pad[j] ^ 0x36
                opad[j] = pad[j] ^ 0x5C
            SHA256_Init(&inner)
            SHA256_Update(&inner, ipad, 64)
            SHA256_Init(&self.ix[i].outer)
            SHA256_Update(&self.ix[i].outer, opad, 64)
            memcpy(self.ix[i].oh, self.ix[i].outer.h, 32)
            order = [kd for kd in edm.order if kd in ix.file.fields]
            self.ix[i].fmap = <int *>malloc(max(self.nkinds, 1) * sizeof(int))
            if self.ix[i].fmap == NULL:
                raise MemoryError()
            for j in range(self.nkinds):
                self.ix[i].fmap[j] = -1
            for j, kd in enumerate(order):
                self.ix[i].fmap[self.kind_slot[kd]] = j
            self.ix[i].need = ix.min_fields
            self.ix[i].f = <KField *>malloc(max(len(order), 1) * sizeof(KField))
            if self.ix[i].f == NULL:
                raise MemoryError()
            memset(self.ix[i].f, 0, max(len(order), 1) * sizeof(KField))
            self.ix[i].nk = len(order)
            for j, kd in enumerate(order):
                fl = ix.file.fields[kd]
                dv = fl.directory
                hv = fl.hashes
                iv = fl.ids
                self._keep.extend((dv, hv, iv))
                self.ix[i].f[j].dir = &dv[0]
                self.ix[i].f[j].hs = <const uint64_t *>&hv[0] if hv.shape[0] else NULL
                self.ix[i].f[j].ids = &iv[0] if iv.shape[0] else NULL
                self.ix[i].f[j].shift = 64 - fl.bits
                self.ix[i].f[j].flt = NULL
                self.ix[i].f[j].fblocks = 0
                if _copy:
                    self._copy_field(&self.ix[i].f[j], dv.shape[0], hv.shape[0], iv.shape[0])
                self._build_filter(&self.ix[i].f[j], self.ix[i].f[j].hs, hv.shape[0])
                self.ix[i].f[j].norm = codes[kd]
                self.ix[i].f[j].kind = self.kind_slot[kd]
                memcpy(&c, &inner, sizeof(SHA256_CTX))
                memcpy(self.ix[i].f[j].ih, inner.h, 32)
                pre = f"{kd}:".encode()
                if len(pre) <= 32 and _short:
                    memcpy(self.ix[i].f[j].pre, PyBytes_AS_STRING(pre), len(pre))
                    self.ix[i].f[j].npre = len(pre)
                SHA256_Update(&c, PyBytes_AS_STRING(pre), len(pre))
                memcpy(&self.ix[i].f[j].inner, &c, sizeof(SHA256_CTX))

    cdef int _copy_field(self, KField *f, Py_ssize_t nd, Py_ssize_t nh, Py_ssize_t ni) except -1:
        """The field's directory, hashes and row ids copied to anonymous memory on 2 MB pages: a
        lookup's two or three cache misses are then not TLB misses too (the mapping has 4 KB pages:
        65 MB of them for 1M rows x 5 fields, far beyond the TLB's reach)."""
        cdef size_t a = (<size_t>nd * 4 + 63) & ~(<size_t>63)
        cdef size_t b = (<size_t>nh * 8 + 63) & ~(<size_t>63)
        cdef size_t total = a + b + <size_t>ni * 4 + 64
        cdef void *p = NULL
        if posix_memalign(&p, 1 << 21, total) != 0:
            raise MemoryError()
        if total >= (1 << 21):
            madvise(p, total, MADV_HUGEPAGE)
        cdef char *c = <char *>p
        cdef const void *sd = f.dir
        cdef const void *sh = f.hs
        cdef const void *si = f.ids
        memcpy(c, f.dir, nd * 4)
        if nh:
            memcpy(c + a, f.hs, nh * 8)
            f.hs = <const uint64_t *>(c + a)
        if ni:
            memcpy(c + a + b, f.ids, ni * 4)
            f.ids = <const uint32_t *>(c + a + b)
        _drop(sd, nd * 4)                       # the mapping's pages read for the copy leave this
        _drop(sh, nh * 8)                       # process's RSS (they stay in the page cache; a later
        _drop(si, ni * 4)                       # read faults them in again)
        f.dir = <const uint32_t *>c
        f.arena = p
        self.copy_bytes += <Py_ssize_t>total
        return 0

    cdef int _build_filter(self, KField *f, const uint64_t *hs, Py_ssize_t n) except -1:
        """The field's membership filter from its sorted hashes (read once, in order)."""
        cdef uint64_t nb = <uint64_t>((n * FILTER_BITS + 255) // 256)
        cdef void *p = NULL
        cdef Py_ssize_t i
        if n == 0:
            return 0
        # 2 MB aligned and huge pages asked for: a probe is then one cache miss, not a TLB miss too
        if posix_memalign(&p, 1 << 21, nb * 32) != 0:
            raise MemoryError()
        if nb * 32 >= (1 << 21):
            madvise(p, nb * 32, MADV_HUGEPAGE)      # advice only: without huge pages it still works
        memset(p, 0, nb * 32)
        with nogil:
            for i in range(n):
                _fadd(<uint32_t *>p, nb, hs[i])
        f.flt = <uint32_t *>p
        f.fblocks = nb
        self.filter_bytes += <Py_ssize_t>(nb * 32)
        return 0

    def __dealloc__(self):
        cdef int i, j
        if self.ix != NULL:
            for i in range(self.nix):
                if self.ix[i].f != NULL:
                    for j in range(self.ix[i].nk):
                        free(self.ix[i].f[j].flt)
                        free(self.ix[i].f[j].arena)
                free(self.ix[i].f)
                free(self.ix[i].fmap)
            free(self.ix)
            self.ix = NULL


cdef struct VS:               # one value of a queued record, under one index
    uint64_t h                # keyed hash
    uint64_t b                # bucket, or NONE (not a value of the kind), LAZY (hashed when reached), DONE
    Py_ssize_t a              # DONE: found at hashes[a:e] (a == e: a miss)
    Py_ssize_t e


cdef struct RX:               # one queued record, under one index
    int alive                 # 0: it cannot match this index (too few kinds, or the filter said so)
    int left                  # kinds of the index present in the record
    int filt                  # the membership filter is used for its values


cdef struct RowSet:           # the matched row ids of one index (at most row_cap), open addressing
    uint32_t *t               # EMPTY: a free slot (row EMPTY itself: has_max)
    Py_ssize_t cap            # a power of two, or 0
    Py_ssize_t n              # rows held
    Py_ssize_t count          # EDM records
    int has_max
    int touched               # some record matched this index (its name is in counts and rows)


cdef extern from *:
    """
    #define DLP_EMPTY_ROW 0xFFFFFFFFu
    """
    const uint32_t EMPTY "DLP_EMPTY_ROW"


cdef inline bint _rs_has(const RowSet *s, uint32_t r) noexcept nogil:
    cdef Py_ssize_t i, mask
    if r == EMPTY:
        return s.has_max
    if s.cap == 0:
        return False
    mask = s.cap - 1
    i = <Py_ssize_t>((r * 2654435761u) & mask)
    while s.t[i] != EMPTY:
        if s.t[i] == r:
            return True
        i = (i + 1) & mask
    return False


cdef inline void _rs_put(uint32_t *t, Py_ssize_t cap, uint32_t r) noexcept nogil:
    cdef Py_ssize_t mask = cap - 1
    cdef Py_ssize_t i = <Py_ssize_t>((r * 2654435761u) & mask)
    while t[i] != EMPTY:
        i = (i + 1) & mask
    t[i] = r


cdef int _rs_add(RowSet *s, uint32_t r) except -1:
    """Add a row known to be absent."""
    cdef Py_ssize_t cap, i
    cdef uint32_t *t
    if r == EMPTY:
        s.has_max = 1
        s.n += 1
        return 0
    if 2 * (s.n + 1) > s.cap:                   # keep the table at most half full
        cap = 64 if s.cap == 0 else 2 * s.cap
        t = <uint32_t *>malloc(cap * sizeof(uint32_t))
        if t == NULL:
            raise MemoryError()
        memset(t, 0xFF, cap * sizeof(uint32_t))
        for i in range(s.cap):
            if s.t[i] != EMPTY:
                _rs_put(t, cap, s.t[i])
        free(s.t)
        s.t = t
        s.cap = cap
    _rs_put(s.t, s.cap, r)
    s.n += 1
    return 0


cdef class Matcher:
    """Per-scan state, the compiled twin of :class:`sensor.edm.match.EdmMatcher` (same interface,
    same batching: ``record`` returns True at the call that completed a batch in which a record
    matched; reading ``counts``, ``rows``, ``total`` or ``verdict`` looks the queue up first).

    Why a batch: each value looked up is two or three dependent cache misses (directory, bucket,
    row ids) in an index far larger than the caches. One record's lookups overlap only each other;
    ``batch`` records' lookups are issued stage by stage (hash and fetch the filter block and
    directory entry of every value when the record is handed over; then every bucket; then every
    row-id span; then the counting, record by record in order), so the misses of the whole batch
    overlap and a record waits on memory about once per batch instead of three times.
    Matched row ids are kept in a C table per index (a Python set is made when ``rows`` is read)."""
    cdef Plan plan
    cdef object edm
    # scratch, reused across records
    cdef Buf vk, vp, vn, vo, vs, rx, roff, rm, canon, tmp, rows, rowbuf, prk, prc, ht, matched
    cdef list _hold                  # Python-normalised values (kept alive until hashed)
    cdef Py_ssize_t _nr, _nv         # queued records, and their distinct values
    cdef Py_ssize_t _nq              # records handed over since the last lookup (the batch's count)
    cdef Py_ssize_t batch
    cdef Py_ssize_t _htcap, _htn
    cdef Py_ssize_t row_cap
    cdef RowSet *_rs                 # per index
    cdef list _kobj                  # kind objects seen (held), their addresses and slots
    cdef PyObject *_kptr[KIND_CACHE]
    cdef int _kslot[KIND_CACHE]
    cdef int _nk
    cdef Py_ssize_t _probes, _hits   # values looked up lately and how many were in the index

    def __cinit__(self):
        memset(&self.vk, 0, sizeof(Buf))
        memset(&self.vp, 0, sizeof(Buf))
        memset(&self.vn, 0, sizeof(Buf))
        memset(&self.vo, 0, sizeof(Buf))
        memset(&self.vs, 0, sizeof(Buf))
        memset(&self.rx, 0, sizeof(Buf))
        memset(&self.roff, 0, sizeof(Buf))
        memset(&self.rm, 0, sizeof(Buf))
        memset(&self.canon, 0, sizeof(Buf))
        memset(&self.tmp, 0, sizeof(Buf))
        memset(&self.rows, 0, sizeof(Buf))
        memset(&self.rowbuf, 0, sizeof(Buf))
        memset(&self.prk, 0, sizeof(Buf))
        memset(&self.prc, 0, sizeof(Buf))
        memset(&self.ht, 0, sizeof(Buf))
        memset(&self.matched, 0, sizeof(Buf))
        self._rs = NULL

    def __init__(self, edm, Plan plan, Py_ssize_t row_cap, Py_ssize_t batch=64):
        self.edm = edm
        self.row_cap = row_cap
        self.batch = max(batch, 1)
        self._kobj = []
        self._nk = 0
        self._probes = 0
        self._hits = 0
        self.plan = plan
        self._hold = []
        self._nr = 0
        self._nv = 0
        self._rs = <RowSet *>malloc(max(plan.nix, 1) * sizeof(RowSet))
        if self._rs == NULL:
            raise MemoryError()
        memset(self._rs, 0, max(plan.nix, 1) * sizeof(RowSet))

    def __dealloc__(self):
        cdef int x
        free(self.vk.p)
        free(self.vp.p)
        self._release()
        free(self.vn.p)
        free(self.vo.p)
        free(self.vs.p)
        free(self.rx.p)
        free(self.roff.p)
        free(self.rm.p)
        free(self.canon.p)
        free(self.tmp.p)
        free(self.rows.p)
        free(self.rowbuf.p)
        free(self.prk.p)
        free(self.prc.p)
        free(self.ht.p)
        free(self.matched.p)
        if self._rs != NULL:
            for x in range(self.plan.nix if self.plan is not None else 0):
                free(self._rs[x].t)
            free(self._rs)
            self._rs = NULL

    def record(self, list values) -> bool:
        """Queue one record's candidate values, hashed now and their first lines fetched; True when
        the batch this call completed matched a row of some index. ``values``: (kind, raw bytes)
        pairs, or the same flat (kind, raw, kind, raw, ...), as the scanner hands them (no tuple
        made and freed per value: ~0.1 us a record of dense content)."""
        cdef Py_ssize_t n = len(values)
        cdef bint flat = n > 0 and not PyTuple_Check(<object>PyList_GET_ITEM(values, 0))
        if flat:
            n >>= 1
        if n < self.plan.min_need or self.plan.nix == 0:
            return False
        cdef Py_ssize_t V = self._nv, R = self._nr
        cdef int nix = self.plan.nix
        _grow(&self.vk, (V + n) * sizeof(int))
        _grow(&self.vp, (V + n) * sizeof(void *))
        _grow(&self.vn, (V + n) * sizeof(Py_ssize_t))
        _grow(&self.vo, (V + n) * sizeof(PyObject *))
        cdef int *vk = <int *>self.vk.p + V
        cdef const unsigned char **vp = <const unsigned char **>self.vp.p + V
        cdef Py_ssize_t *vn = <Py_ssize_t *>self.vn.p + V
        cdef PyObject **vo = <PyObject **>self.vo.p + V
        cdef Py_ssize_t i, j, m = 0, ln
        cdef int slot, nkinds_present = 0
        cdef unsigned long long seen = 0
        cdef object t, raw
        cdef const unsigned char *p
        cdef object kind
        cdef int c, x
        # distinct values per kind, in order of first appearance (the reference's by_kind)
        for i in range(n):
            if flat:
                kind = <object>PyList_GET_ITEM(values, 2 * i)
                raw = <object>PyList_GET_ITEM(values, 2 * i + 1)
            else:
                t = <object>PyList_GET_ITEM(values, i)
                if PyTuple_Check(t) and PyTuple_GET_SIZE(t) == 2:
                    kind = <object>PyTuple_GET_ITEM(t, 0)
                    raw = <object>PyTuple_GET_ITEM(t, 1)
                else:
                    kind, raw = t
            # the scanner hands the same kind objects every time: known by identity, not hashed
            slot = -1
            for c in range(self._nk):
                if <PyObject *>kind == self._kptr[c]:
                    slot = self._kslot[c]
                    break
            else:
                slot = self._learn(kind)
            if slot < 0 or not PyBytes_Check(raw):
                continue
            p = <const unsigned char *>PyBytes_AS_STRING(raw)
            ln = PyBytes_GET_SIZE(raw)
            for j in range(m):
                if vk[j] == slot and vn[j] == ln and memcmp(vp[j], p, ln) == 0:
                    break
            else:
                vk[m] = slot
                vp[m] = p
                vn[m] = ln
                vo[m] = <PyObject *>raw
                m += 1
                if slot < 64:
                    if not (seen >> slot) & 1:
                        seen |= 1ULL << slot
                        nkinds_present += 1
                else:
                    nkinds_present += 1         # (more than 64 kinds: counted per value, a bound)
        self._nq += 1                           # (the reference queues it, then finds it short)
        if nkinds_present < self.plan.min_need:
            if self._nq >= self.batch:
                return self._flush() == 1
            return False
        _grow(&self.vs, (V + m) * nix * sizeof(VS))
        _grow(&self.rx, (R + 1) * nix * sizeof(RX))
        _grow(&self.roff, (R + 1) * sizeof(Py_ssize_t))
        _grow(&self.rm, (R + 1) * sizeof(Py_ssize_t))
        cdef VS *vs = <VS *>self.vs.p + V * nix
        cdef RX *rx = <RX *>self.rx.p + R * nix
        for x in range(nix):
            self._stage1(x, vk, vp, vn, m, vs + x * m, rx + x)
        if self._hold:
            self._hold = []
        # the values' bytes (vp points into them) held until the batch is looked up (the caller's
        # list may change after this call): a reference each, no Python object made
        for i in range(m):
            _incref(vo[i])
        (<Py_ssize_t *>self.roff.p)[R] = V
        (<Py_ssize_t *>self.rm.p)[R] = m
        self._nv = V + m
        self._nr = R + 1
        if self._nq >= self.batch:
            return self._flush() == 1
        return False

    cdef int _learn(self, object kind) except -2:
        """The slot of a kind not seen by identity yet (-1: no index holds it); remembered."""
        v = self.plan.kind_slot.get(kind)
        cdef int slot = -1 if v is None else <int>v
        if self._nk < KIND_CACHE:
            self._kobj.append(kind)
            self._kptr[self._nk] = <PyObject *>kind
            self._kslot[self._nk] = slot
            self._nk += 1
        return slot

    cdef int _flush(self) except -1:
        """Look the queued records up, stage by stage over the whole batch; 1 when one matched."""
        cdef Py_ssize_t R = self._nr, r, off, m
        cdef int nix = self.plan.nix, x
        cdef bint hit = False
        self._nq = 0
        if R == 0:
            return 0
        cdef int *vk = <int *>self.vk.p
        cdef const unsigned char **vp = <const unsigned char **>self.vp.p
        cdef Py_ssize_t *vn = <Py_ssize_t *>self.vn.p
        cdef VS *vs = <VS *>self.vs.p
        cdef RX *rx = <RX *>self.rx.p
        cdef Py_ssize_t *roff = <Py_ssize_t *>self.roff.p
        cdef Py_ssize_t *rm = <Py_ssize_t *>self.rm.p
        try:
            for r in range(R):                  # the filter (its lines came with the hashing); directory fetched
                off = roff[r]
                m = rm[r]
                for x in range(nix):
                    if rx[r * nix + x].alive:
                        self._stage2(x, vk + off, m, vs + off * nix + x * m, rx + r * nix + x)
            for r in range(R):                  # the buckets fetched
                off = roff[r]
                m = rm[r]
                for x in range(nix):
                    if rx[r * nix + x].alive:
                        self._stage2b(x, vk + off, m, vs + off * nix + x * m)
            for r in range(R):                  # the buckets searched; row ids fetched
                off = roff[r]
                m = rm[r]
                for x in range(nix):
                    if rx[r * nix + x].alive:
                        self._stage3(x, vk + off, m, vs + off * nix + x * m)
            for r in range(R):                  # counted, record by record in order
                off = roff[r]
                m = rm[r]
                for x in range(nix):
                    if rx[r * nix + x].alive and self._stage4(x, vk + off, vp + off, vn + off, m,
                                                              vs + off * nix + x * m, rx + r * nix + x):
                        hit = True
        finally:
            self._release()
            self._nr = 0
            self._nq = 0
            self._hold = []
        return 1 if hit else 0

    cdef void _release(self) noexcept:
        """Drop the queued values' references."""
        cdef PyObject **vo = <PyObject **>self.vo.p
        cdef Py_ssize_t i, n = self._nv
        self._nv = 0
        for i in range(n):
            _decref(vo[i])

    cdef int _stage1(self, int x, int *vk, const unsigned char **vp, Py_ssize_t *vn, Py_ssize_t m,
                     VS *vs, RX *rx) except -1:
        """At hand-over: which values of the record are looked up ahead under index ``x``; those
        hashed, their filter block and directory entry fetched."""
        cdef IPlan *ip = &self.plan.ix[x]
        cdef int need = ip.need
        cdef int k, left = 0
        cdef Py_ssize_t i, j, b, cl
        cdef KField *f
        cdef uint64_t h
        cdef const unsigned char *cp
        rx.alive = 0
        # kinds of this index present in the record; the first of them (see below) are hashed ahead.
        # While most values looked up lately were in the index (the filter is off then), a record is
        # most likely a match after its first need kinds: only they are hashed ahead
        if self._probes > 4096:
            self._probes >>= 1
            self._hits >>= 1
        cdef bint mostly_in = 2 * self._hits > self._probes
        cdef int cutoff = ip.nk, ahead_kinds, seen = 0
        for k in range(ip.nk):
            for i in range(m):
                if vk[i] == ip.f[k].kind:
                    left += 1
                    break
        if left < need:
            return 0
        # while most values miss, a record of other people is rejected by the filter once
        # left - need + 1 of its kinds miss (the others cannot make min_fields): exactly those are
        # hashed ahead (4 kinds, min_fields 2: 3; a record without a name: 2, not its date of
        # birth too, which a large table nearly always holds); the rest only if it survives
        if mostly_in and _lean:
            ahead_kinds = need
        elif _lean:
            ahead_kinds = left - need + 1
        else:
            ahead_kinds = need + 1
        for k in range(ip.nk):
            for i in range(m):
                if vk[i] == ip.f[k].kind:
                    seen += 1
                    if seen == ahead_kinds:
                        cutoff = k
                    break
            if seen == ahead_kinds:
                break
        cdef bint ahead = _ahead
        # the filter pays when most values are not in the index (a miss: one line instead of two or
        # three) and costs a line when most are (breach-like content of the indexed people): it is
        # used while at most half the values looked up lately were in the index. Either way the
        # results are the same
        cdef bint filt = _filter and (_filter == 2 or not mostly_in)
        for i in range(m):
            j = ip.fmap[vk[i]]
            if j < 0:
                vs[i].b = NONE
                continue
            if not ahead or j > cutoff:
                vs[i].b = LAZY
                continue
            f = &ip.f[j]
            cl = self._canon(f.norm, f.kind, vp[i], vn[i], &cp)
            if cl < 0:
                vs[i].b = NONE
                continue
            h = _hmac_short(f, ip, cp, cl)
            self._probes += 1
            vs[i].h = h
            b = <Py_ssize_t>(h >> f.shift) if f.shift < 64 else 0
            vs[i].b = <uint64_t>b
            if filt and f.flt != NULL:
                dlp_prefetch(_fblock(f.flt, f.fblocks, h))
            if _pardir or not filt:
                dlp_prefetch(&f.dir[b])
        rx.alive = 1
        rx.left = left
        rx.filt = filt
        return 0

    cdef int _stage2(self, int x, int *vk, Py_ssize_t m, VS *vs, RX *rx) noexcept:
        """The filter checked (a value it rejects is a miss without touching the index); the
        directory entries of the others fetched (those of a record without the filter came with
        its hashing)."""
        cdef IPlan *ip = &self.plan.ix[x]
        cdef KField *f
        cdef Py_ssize_t i
        cdef int k, nfound
        if rx.filt:
            for i in range(m):
                if vs[i].b == NONE or vs[i].b == LAZY:
                    continue
                f = &ip.f[ip.fmap[vk[i]]]
                if f.flt != NULL and not _fhas(_fblock(f.flt, f.fblocks, vs[i].h), vs[i].h):
                    vs[i].b = DONE
                    vs[i].a = vs[i].e = 0
                    continue
                if not _pardir:
                    dlp_prefetch(&f.dir[vs[i].b])
            # fewer kinds that may still hit than min_fields: no lookup can make a match
            nfound = 0
            for k in range(ip.nk):
                for i in range(m):
                    if vk[i] == ip.f[k].kind and vs[i].b != NONE and vs[i].b != DONE:
                        nfound += 1
                        break
            if nfound < ip.need:
                rx.alive = 0
        return 0

    cdef int _stage2b(self, int x, int *vk, Py_ssize_t m, VS *vs) noexcept:
        """The buckets of the values left fetched (their directory entries are in by now)."""
        cdef IPlan *ip = &self.plan.ix[x]
        cdef KField *f
        cdef Py_ssize_t i
        for i in range(m):
            if vs[i].b != NONE and vs[i].b != LAZY and vs[i].b != DONE:
                f = &ip.f[ip.fmap[vk[i]]]
                dlp_prefetch(&f.hs[f.dir[vs[i].b]])
        return 0

    cdef int _stage3(self, int x, int *vk, Py_ssize_t m, VS *vs) noexcept:
        """Each bucket searched (its lines are on their way); the found row ids fetched."""
        cdef IPlan *ip = &self.plan.ix[x]
        cdef KField *f
        cdef Py_ssize_t i, a = 0, e = 0
        for i in range(m):
            if vs[i].b == NONE or vs[i].b == LAZY or vs[i].b == DONE:
                continue
            f = &ip.f[ip.fmap[vk[i]]]
            if not _span(f, <Py_ssize_t>vs[i].b, vs[i].h, &a, &e):
                vs[i].b = DONE
                vs[i].a = vs[i].e = 0
                continue
            vs[i].b = DONE
            vs[i].a = a
            vs[i].e = e
            self._hits += 1
            dlp_prefetch(&f.ids[a])
        return 0

    cdef bint _stage4(self, int x, int *vk, const unsigned char **vp, Py_ssize_t *vn, Py_ssize_t m,
                      VS *vs, RX *rx) except -1:
        """The per-row counting of EdmMatcher._lookup for one record under index ``x``, with the same
        early exits and order; values left LAZY are hashed and looked up here."""
        cdef IPlan *ip = &self.plan.ix[x]
        cdef int need = ip.need
        cdef int k, left = rx.left, nfound = 0, nv
        cdef bint filt = rx.filt
        cdef Py_ssize_t i, j, e, b, a, nr, npr = 0, nm = 0, q
        cdef KField *f
        cdef uint64_t h
        cdef const uint32_t *rp
        cdef uint32_t *rows
        cdef uint32_t *rb
        cdef uint32_t *prk
        cdef uint32_t *prc
        cdef uint32_t *mt
        cdef uint32_t r
        cdef Py_ssize_t cl, nrows
        cdef bint have
        cdef Buf sw
        cdef const unsigned char *cp
        for k in range(ip.nk):
            f = &ip.f[k]
            nv = 0
            for i in range(m):
                if vk[i] == f.kind:
                    nv += 1
            if nv == 0:
                continue
            if nfound + left < need:
                break                           # even a hit on every kind left cannot make it
            left -= 1
            have = False
            nrows = 0
            rows = NULL
            for i in range(m):
                if vk[i] != f.kind or vs[i].b == NONE:
                    continue
                if vs[i].b == DONE:
                    a = vs[i].a
                    e = vs[i].e
                    if a == e:
                        continue
                else:                           # LAZY: hashed and looked up now
                    cl = self._canon(f.norm, f.kind, vp[i], vn[i], &cp)
                    if cl < 0:
                        continue
                    h = _hmac_short(f, ip, cp, cl)
                    self._probes += 1
                    if filt and f.flt != NULL and not _fhas(_fblock(f.flt, f.fblocks, h), h):
                        continue
                    b = <Py_ssize_t>(h >> f.shift) if f.shift < 64 else 0
                    if not _span(f, b, h, &a, &e):
                        continue
                    self._hits += 1
                rp = f.ids + a
                nr = e - a
                if not have:
                    _grow(&self.rows, nr * sizeof(uint32_t))
                    rows = <uint32_t *>self.rows.p
                    memcpy(rows, rp, nr * sizeof(uint32_t))
                    nrows = nr
                    have = True
                else:                           # sorted union (the reference: sorted(set(rows) | got))
                    _grow(&self.rowbuf, (nrows + nr) * sizeof(uint32_t))
                    rb = <uint32_t *>self.rowbuf.p
                    rows = <uint32_t *>self.rows.p
                    a = 0
                    j = 0
                    q = 0
                    while a < nrows or j < nr:
                        if j >= nr or (a < nrows and rows[a] < rp[j]):
                            r = rows[a]
                            a += 1
                        elif a >= nrows or rp[j] < rows[a]:
                            r = rp[j]
                            j += 1
                        else:
                            r = rows[a]
                            a += 1
                            j += 1
                        if q == 0 or rb[q - 1] != r:
                            rb[q] = r
                            q += 1
                    sw = self.rows
                    self.rows = self.rowbuf
                    self.rowbuf = sw
                    rows = <uint32_t *>self.rows.p
                    nrows = q
            if not have:
                continue
            nfound += 1
            if nfound == 1:
                self._ht_reset(nrows)           # per_row starts empty for this record and index
                if need > 1:                    # the first kind that hit: its rows have one field
                    if left + 1 >= need:
                        _grow(&self.prk, nrows * sizeof(uint32_t))
                        _grow(&self.prc, nrows * sizeof(uint32_t))
                        prk = <uint32_t *>self.prk.p
                        prc = <uint32_t *>self.prc.p
                        for i in range(nrows):  # (one kind's rows are distinct)
                            prk[i] = rows[i]
                            prc[i] = 1
                            self._ht_put(rows[i], i)
                        npr = nrows
                    continue
            if left + 1 >= need:                # a row first seen here can still reach min_fields
                _grow(&self.prk, (npr + nrows) * sizeof(uint32_t))
                _grow(&self.prc, (npr + nrows) * sizeof(uint32_t))
                _grow(&self.matched, (nm + nrows) * sizeof(uint32_t))
                prk = <uint32_t *>self.prk.p
                prc = <uint32_t *>self.prc.p
                mt = <uint32_t *>self.matched.p
                for i in range(nrows):
                    r = rows[i]
                    j = self._find_row(r, npr)
                    if j < 0:
                        prk[npr] = r
                        prc[npr] = 1
                        self._add_row(r, npr)
                        j = npr
                        npr += 1
                    else:
                        prc[j] += 1
                    if <int>prc[j] == need:
                        mt[nm] = r
                        nm += 1
            else:                               # only rows already counted can: check them alone
                _grow(&self.matched, (nm + npr) * sizeof(uint32_t))
                prk = <uint32_t *>self.prk.p
                prc = <uint32_t *>self.prc.p
                mt = <uint32_t *>self.matched.p
                for j in range(npr):
                    if <int>prc[j] + 1 + left >= need and _bsearch(rows, nrows, prk[j]):
                        prc[j] += 1
                        if <int>prc[j] == need:
                            mt[nm] = prk[j]
                            nm += 1
            if nm:
                break                           # this record is that row's person: no more lookups
        if nm == 0:
            return False
        self._note(x, <uint32_t *>self.matched.p, nm)
        return True

    cdef int _note(self, int x, uint32_t *mt, Py_ssize_t nm) except -1:
        """A matched record's rows: each new one counted (and kept while fewer than ``row_cap``)."""
        cdef Py_ssize_t i
        cdef uint32_t r
        cdef RowSet *s = &self._rs[x]
        s.touched = 1
        for i in range(nm):
            r = mt[i]
            if _rs_has(s, r):
                continue
            if s.n < self.row_cap:
                _rs_add(s, r)
            s.count += 1
        return 0

    cdef Py_ssize_t _canon(self, int norm, int kind, const unsigned char *s, Py_ssize_t n,
                           const unsigned char **outp) except -3:
        """Canonical bytes of one value in ``self.canon`` (or a Python bytes object held for the
        record): their length, or -1 when the value is not of the kind."""
        cdef Py_ssize_t r = -2
        _grow(&self.canon, 2 * n + 64)
        cdef unsigned char *out = <unsigned char *>self.canon.p
        if norm == N_IDENT:
            r = _n_ident(s, n, out)
        elif norm == N_NAME:
            r = _n_name(s, n, out)
        elif norm == N_ADDRESS:
            _grow(&self.tmp, n + 1)
            r = _n_address(s, n, out, <unsigned char *>self.tmp.p)
        elif norm == N_DATE:
            r = _n_date(s, n, out)
        if r != -2:
            outp[0] = out
            return r
        v = self.plan.fallback[kind](<bytes>(<char *>s)[:n])
        if v is None or not PyBytes_Check(v) or PyBytes_GET_SIZE(v) == 0:
            return -1
        self._hold.append(v)
        outp[0] = <const unsigned char *>PyBytes_AS_STRING(v)
        return PyBytes_GET_SIZE(v)

    # per_row: rows in insertion order (prk/prc) and an open-addressing table row -> position
    cdef int _ht_reset(self, Py_ssize_t want) except -1:
        cdef Py_ssize_t cap = 16                 # (a record matches a row or a few: a small table to clear)
        while cap < 4 * want + 4:
            cap <<= 1
        _grow(&self.ht, cap * sizeof(Py_ssize_t))
        cdef Py_ssize_t *t = <Py_ssize_t *>self.ht.p
        cdef Py_ssize_t i
        for i in range(cap):
            t[i] = -1
        self._htcap = cap
        self._htn = 0
        return 0

    cdef Py_ssize_t _find_row(self, uint32_t r, Py_ssize_t npr) noexcept:
        cdef Py_ssize_t *t = <Py_ssize_t *>self.ht.p
        cdef uint32_t *prk = <uint32_t *>self.prk.p
        cdef Py_ssize_t mask = self._htcap - 1
        cdef Py_ssize_t i = <Py_ssize_t>((r * 2654435761u) & mask)
        while t[i] >= 0:
            if prk[t[i]] == r:
                return t[i]
            i = (i + 1) & mask
        return -1

    cdef int _add_row(self, uint32_t r, Py_ssize_t pos) except -1:
        cdef Py_ssize_t i
        if 2 * (self._htn + 1) > self._htcap:      # keep the table at most half full
            self._ht_reset(self._htn + 1)
            for i in range(pos):                   # rows before pos are in prk[0:pos]
                self._ht_put((<uint32_t *>self.prk.p)[i], i)
        self._ht_put(r, pos)
        return 0

    cdef inline void _ht_put(self, uint32_t r, Py_ssize_t pos) noexcept:
        cdef Py_ssize_t *t = <Py_ssize_t *>self.ht.p
        cdef Py_ssize_t mask = self._htcap - 1
        cdef Py_ssize_t i = <Py_ssize_t>((r * 2654435761u) & mask)
        while t[i] >= 0:
            i = (i + 1) & mask
        t[i] = pos
        self._htn += 1

    def probe(self, int x, str kind, bytes raw):
        """(canonical bytes, keyed hash) of one value under index ``x``, or (None, None) when it is
        not a value of the kind: the tests hold both to the Python normaliser and Hasher."""
        cdef const unsigned char *cp
        cdef Py_ssize_t cl
        cdef int j
        cdef KField *f
        if not 0 <= x < self.plan.nix or kind not in self.plan.kind_slot:
            raise KeyError(kind)
        j = self.plan.ix[x].fmap[<int>self.plan.kind_slot[kind]]
        if j < 0:
            raise KeyError(kind)
        f = &self.plan.ix[x].f[j]
        cl = self._canon(f.norm, f.kind, <const unsigned char *>PyBytes_AS_STRING(raw), len(raw), &cp)
        if cl < 0:
            return None, None
        out = (<char *>cp)[:cl]
        self._hold = []
        return out, _hmac_short(f, &self.plan.ix[x], <const unsigned char *>PyBytes_AS_STRING(out), cl)

    def in_filter(self, int x, str kind, unsigned long long h) -> bool:
        """Whether the membership filter of ``kind`` under index ``x`` may hold the keyed hash ``h``
        (True for every hash in the index: the tests check it has no false negatives)."""
        if not 0 <= x < self.plan.nix or kind not in self.plan.kind_slot:
            raise KeyError(kind)
        cdef int j = self.plan.ix[x].fmap[<int>self.plan.kind_slot[kind]]
        if j < 0:
            raise KeyError(kind)
        cdef KField *f = &self.plan.ix[x].f[j]
        cdef uint64_t v = <uint64_t>h
        return f.flt == NULL or _fhas(_fblock(f.flt, f.fblocks, v), v)

    def flush(self) -> bool:
        """Look the queued records up now; True when one matched."""
        return self._flush() == 1

    @property
    def counts(self) -> dict:
        """Index name -> EDM records so far."""
        self._flush()
        cdef int x
        return {self.plan.names[x]: self._rs[x].count for x in range(self.plan.nix) if self._rs[x].touched}

    @property
    def rows(self) -> dict:
        """Index name -> matched row ids so far (at most ``ROW_CAP``)."""
        self._flush()
        cdef int x
        cdef Py_ssize_t i
        cdef RowSet *s
        out = {}
        for x in range(self.plan.nix):
            s = &self._rs[x]
            if not s.touched:
                continue
            got = out[self.plan.names[x]] = {s.t[i] for i in range(s.cap) if s.t[i] != EMPTY}
            if s.has_max:
                got.add(EMPTY)
        return out

    @property
    def total(self) -> int:
        self._flush()
        cdef int x
        return sum(self._rs[x].count for x in range(self.plan.nix))

    def verdict(self) -> str:
        """pass / alert / trip from the per-index EDM thresholds (0 = that level never fires)."""
        self._flush()
        v = "pass"
        cdef int x = 0
        cdef Py_ssize_t n
        for ix in self.edm.indexes:
            n = self._rs[x].count if x < self.plan.nix else 0
            x += 1
            if ix.trip > 0 and n >= ix.trip:
                return "trip"
            if ix.alert > 0 and n >= ix.alert:
                v = "alert"
        return v


cdef inline bint _span(const KField *f, Py_ssize_t b, uint64_t h, Py_ssize_t *a, Py_ssize_t *e) noexcept nogil:
    """The positions [a, e) of hash ``h`` in bucket ``b`` of field ``f``; False when it is absent."""
    cdef Py_ssize_t lo = f.dir[b], hi = f.dir[b + 1], j
    if lo >= hi:
        return False
    j = _lower(f.hs, lo, hi, h)
    if j == hi or f.hs[j] != h:
        return False
    a[0] = j
    j += 1
    while j < hi and f.hs[j] == h:
        j += 1
    e[0] = j
    return True


cdef inline Py_ssize_t _lower(const uint64_t *hs, Py_ssize_t lo, Py_ssize_t hi, uint64_t h) noexcept nogil:
    """The first position in hs[lo:hi] whose hash is >= h (bisect_left)."""
    cdef Py_ssize_t j
    while lo < hi:
        j = (lo + hi) >> 1
        if hs[j] < h:
            lo = j + 1
        else:
            hi = j
    return lo


cdef inline bint _bsearch(const uint32_t *a, Py_ssize_t n, uint32_t r) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < r:
            lo = mid + 1
        else:
            hi = mid
    return lo < n and a[lo] == r

