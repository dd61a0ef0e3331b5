/*
 * pgmux._arenas: give back the free pools of CPython's small-object arenas after a storm (issue 11).
 *
 * CPython's object allocator (pymalloc) takes memory from the OS in arenas of 1 MiB, cut into pools of
 * 16 KiB, each pool holding blocks of one size. An arena goes back to the OS only once every block in
 * it is free. After a storm of clients has left, a few objects made during the storm and kept after it
 * (and objects made later, which land in the storm's half-empty pools) pin some arenas: each stays
 * resident whole, though most of its pools are empty. runtime/memtrim.py calls `release` after its
 * collection and malloc_trim: for each empty pool of each arena, the pages after the pool's first one
 * go back to the OS (madvise MADV_DONTNEED). The first page holds the pool's header, which pymalloc
 * keeps using while the pool is empty (its place in the arena's list of free pools), so it stays.
 *
 * How the arenas are found: `install` puts an arena allocator (PyObject_SetArenaAllocator, a public
 * API) in front of CPython's own one. It calls the previous allocator for every arena and remembers
 * the address and size of each arena it made; arenas made before `install` are not seen.
 *
 * What this relies on, beyond the public API: the layout of CPython's pool header (Objects/obmalloc.c,
 * unchanged from 3.8 to 3.13: a block count, the free-list head, two list links, then four unsigned
 * ints arenaindex, szidx, nextoffset, maxnextoffset) and 16 KiB pools of 16-byte-aligned size classes
 * (CPython's choice on 64-bit builds). Before it touches anything, `release` checks every in-use pool
 * of every arena it scans against that layout (its size class and the offset of its last block agree);
 * a single mismatch turns it off for the life of the process. Memory is only ever read inside an
 * arena it saw allocated and not yet freed.
 *
 * What it writes in an empty pool's header: the size class is set to CPython's "never used" value
 * (DUMMY_SIZE_IDX) and the free-list head to NULL. pymalloc then sets the pool up from scratch when it
 * uses it again, as for a pool never used, instead of reusing the old free list, which lived in the
 * pages given back and would read as zeros. The NULL free-list head also marks the pool as released,
 * so that the next call skips it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

/* The layout below is CPython's from 3.8 to 3.13 with the GIL, on 64-bit builds; elsewhere `release`
 * does nothing. */
#if PY_VERSION_HEX >= 0x03080000 && PY_VERSION_HEX < 0x030E0000 && SIZEOF_VOID_P == 8 && !defined(Py_GIL_DISABLED)
#define LAYOUT_KNOWN 1
#else
#define LAYOUT_KNOWN 0
#endif

#define POOL_SIZE ((uintptr_t)16384)
#define ALIGNMENT_SHIFT 4
#define SIZE_CLASSES 32 /* SMALL_REQUEST_THRESHOLD 512 / ALIGNMENT 16 */
#define DUMMY_SIZE_IDX 0xffffu

typedef struct { /* CPython's struct pool_header (Objects/obmalloc.c) */
    union {
        void *padding;
        unsigned int count;
    } ref;
    void *freeblock;
    void *nextpool;
    void *prevpool;
    unsigned int arenaindex;
    unsigned int szidx;
    unsigned int nextoffset;
    unsigned int maxnextoffset;
} PoolHeader;

#define MAX_ARENAS 65536 /* 64 GiB of 1 MiB arenas; beyond that, arenas are not tracked (none released) */

static PyObjectArenaAllocator previous;
static int installed = 0;
static int broken = 0; /* a pool header did not match the layout: never touch anything again */
static uintptr_t *arena_base = NULL; /* the arenas allocated since install, unordered */
static size_t *arena_len = NULL;
static size_t n_arenas = 0;
static size_t untracked = 0; /* arenas allocated past MAX_ARENAS */
static size_t released_pools = 0;

static void *arena_alloc(void *ctx, size_t size)
{
    void *p = previous.alloc(previous.ctx, size);
    if (p != NULL) {
        if (n_arenas < MAX_ARENAS) {
            arena_base[n_arenas] = (uintptr_t)p;
            arena_len[n_arenas] = size;
            n_arenas++;
        } else {
            untracked++;
        }
    }
    return p;
}

static void arena_free(void *ctx, void *ptr, size_t size)
{
    for (size_t i = n_arenas; i-- > 0;) {
        if (arena_base[i] == (uintptr_t)ptr) {
            n_arenas--;
            arena_base[i] = arena_base[n_arenas];
            arena_len[i] = arena_len[n_arenas];
            break;
        }
    }
    previous.free(previous.ctx, ptr, size);
}

static PyObject *install(PyObject *self, PyObject *unused)
{
    if (!installed) {
        arena_base = PyMem_RawCalloc(MAX_ARENAS, sizeof(uintptr_t));
        arena_len = PyMem_RawCalloc(MAX_ARENAS, sizeof(size_t));
        if (arena_base == NULL || arena_len == NULL) {
            PyMem_RawFree(arena_base);
            PyMem_RawFree(arena_len);
            arena_base = NULL;
            arena_len = NULL;
            return PyErr_NoMemory();
        }
        PyObject_GetArenaAllocator(&previous);
        PyObjectArenaAllocator mine = {NULL, arena_alloc, arena_free};
        PyObject_SetArenaAllocator(&mine);
        installed = 1;
    }
    Py_RETURN_NONE;
}

/* Whether an in-use pool's header is what CPython's layout says it is. */
static int plausible(const PoolHeader *h)
{
    if (h->szidx >= SIZE_CLASSES)
        return 0;
    uintptr_t block = ((uintptr_t)h->szidx + 1) << ALIGNMENT_SHIFT;
    if (h->maxnextoffset != POOL_SIZE - block)
        return 0;
    if (h->nextoffset > POOL_SIZE || h->ref.count > POOL_SIZE / block)
        return 0;
    uintptr_t fb = (uintptr_t)h->freeblock;
    return fb == 0 || (fb > (uintptr_t)h && fb < (uintptr_t)h + POOL_SIZE);
}

static PyObject *release(PyObject *self, PyObject *unused)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t pools = 0;
    if (!LAYOUT_KNOWN || !installed || broken || page <= 0 || (uintptr_t)page >= POOL_SIZE || POOL_SIZE % (uintptr_t)page)
        return Py_BuildValue("(nn)", (Py_ssize_t)0, (Py_ssize_t)0);
    /* First every arena's in-use pools against the layout, then the writes: all or nothing. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n_arenas; i++) {
            uintptr_t base = arena_base[i], end = base + arena_len[i];
            uintptr_t p = (base + POOL_SIZE - 1) & ~(POOL_SIZE - 1);
            for (; p + POOL_SIZE <= end; p += POOL_SIZE) {
                PoolHeader *h = (PoolHeader *)p;
                if (h->ref.count != 0) {
                    if (pass == 0 && !plausible(h)) {
                        broken = 1;
                        return Py_BuildValue("(nn)", (Py_ssize_t)-1, (Py_ssize_t)0);
                    }
                    continue;
                }
                if (pass == 0 || h->freeblock == NULL) /* never used, or already released */
                    continue;
                h->szidx = DUMMY_SIZE_IDX;
                h->freeblock = NULL;
                if (madvise((void *)(p + (uintptr_t)page), POOL_SIZE - (uintptr_t)page, MADV_DONTNEED) == 0)
                    pools++;
            }
        }
    }
    released_pools += pools;
    return Py_BuildValue("(nn)", (Py_ssize_t)pools, (Py_ssize_t)(pools * (POOL_SIZE - (uintptr_t)page)));
}

static PyObject *stats(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:O,s:O,s:n,s:n,s:n}", "installed", installed ? Py_True : Py_False, "broken",
                         broken ? Py_True : Py_False, "arenas", (Py_ssize_t)n_arenas, "untracked",
                         (Py_ssize_t)untracked, "released_pools", (Py_ssize_t)released_pools);
}

static PyMethodDef methods[] = {
    {"install", install, METH_NOARGS,
     "install() -> None: track the arenas CPython allocates from now on (idempotent)."},
    {"release", release, METH_NOARGS,
     "release() -> (pools, bytes): give back the pages of the empty pools of the tracked arenas after each "
     "pool's first page; (-1, 0) when a pool header did not match CPython's layout (then never again)."},
    {"stats", stats, METH_NOARGS, "stats() -> dict: installed, broken, arenas tracked, untracked, pools released."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pgmux._arenas", NULL, 0, methods};

PyMODINIT_FUNC PyInit__arenas(void)
{
    return PyModule_Create(&module);
}
