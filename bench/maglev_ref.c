/*
 * Plain C reference of Weir's Maglev population, written independently of
 * nodeagent/_maglev.c: the speed baseline of bench/maglev_bench.py and a cross-check that
 * the extension builds the same table.
 *
 * Same algorithm: backends sorted by identity bytes, offset = SipHash-2-4(key_off ^ seed, id)
 * mod M, skip = SipHash-2-4(key_skip ^ seed, id) mod (M - 1) + 1, turns in sorted order
 * (Maglev paper, NSDI 2016, section 3.4, listing 1), Katran MaglevHashV2 credits for weights.
 * Each timed build sorts, hashes and populates, like one build_table() call.
 *
 * usage: maglev_ref IDS_FILE SIZE SEED REPEATS TABLE_OUT
 *   IDS_FILE: one backend per line, "ID" or "ID WEIGHT"; TABLE_OUT gets the last table as
 *   native uint32 indices into the file's lines. Prints "min_ns=... median_ns=...".
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

static void sip_round(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = rotl(v[1], 13) ^ v[0];
    v[0] = rotl(v[0], 32);
    v[2] += v[3];
    v[3] = rotl(v[3], 16) ^ v[2];
    v[0] += v[3];
    v[3] = rotl(v[3], 21) ^ v[0];
    v[2] += v[1];
    v[1] = rotl(v[1], 17) ^ v[2];
    v[2] = rotl(v[2], 32);
}

static uint64_t siphash(uint64_t k0, uint64_t k1, const unsigned char *s, size_t len)
{
    uint64_t v[4] = {k0 ^ 0x736f6d6570736575ULL, k1 ^ 0x646f72616e646f6dULL,
                     k0 ^ 0x6c7967656e657261ULL, k1 ^ 0x7465646279746573ULL};
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t m = 0;
        for (size_t b = 8; b-- > 0;)
            m = (m << 8) | s[i + b];
        v[3] ^= m;
        sip_round(v);
        sip_round(v);
        v[0] ^= m;
    }
    uint64_t last = (uint64_t)len << 56;
    for (size_t b = 0; i + b < len; b++)
        last |= (uint64_t)s[i + b] << (8 * b);
    v[3] ^= last;
    sip_round(v);
    sip_round(v);
    v[0] ^= last;
    v[2] ^= 0xff;
    for (int r = 0; r < 4; r++)
        sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

struct backend {
    char *id;
    uint32_t weight;
    uint32_t line; /* index in the input file: what the table holds */
};

static int by_id(const void *a, const void *b)
{
    return strcmp(((const struct backend *)a)->id, ((const struct backend *)b)->id);
}

/* (c + skip) mod m for c, skip < m: a compare instead of a division, which halves the
 * build time; the baseline should be the fast plain version, not a strawman. */
static uint32_t step(uint32_t c, uint32_t skip, uint32_t m)
{
    c += skip;
    return c >= m ? c - m : c;
}

/* One build. be[] is re-sorted in place (a real caller's input arrives in any order). */
static void build(struct backend *be, size_t n, uint32_t m, uint64_t seed, uint32_t *table,
                  uint32_t *offset, uint32_t *skip, uint32_t *next, uint64_t *credit)
{
    qsort(be, n, sizeof(*be), by_id);
    uint32_t wmax = 0;
    int weighted = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(be[i].id);
        const unsigned char *s = (const unsigned char *)be[i].id;
        uint64_t h1 = siphash(seed ^ 0x6f3a76656c67616dULL, 0x66666f2d72696577ULL, s, len);
        uint64_t h2 = siphash(seed ^ 0x733a76656c67616dULL, 0x706b732d72696577ULL, s, len);
        offset[i] = (uint32_t)(h1 % m);
        skip[i] = (uint32_t)(h2 % (m - 1)) + 1;
        next[i] = offset[i]; /* permutation[i][j], advanced by skip mod m */
        credit[i] = 0;
        if (i > 0 && be[i].weight != be[0].weight)
            weighted = 1;
        if (be[i].weight > wmax)
            wmax = be[i].weight;
    }
    for (uint32_t j = 0; j < m; j++)
        table[j] = UINT32_MAX;
    uint32_t filled = 0;
    while (filled < m) {
        for (size_t i = 0; i < n && filled < m; i++) {
            if (weighted) {
                credit[i] += be[i].weight;
                if (credit[i] < wmax)
                    continue;
                credit[i] -= wmax;
            }
            uint32_t c = next[i];
            while (table[c] != UINT32_MAX)
                c = step(c, skip[i], m);
            table[c] = be[i].line;
            next[i] = step(c, skip[i], m);
            filled++;
        }
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s IDS_FILE SIZE SEED REPEATS TABLE_OUT\n", argv[0]);
        return 2;
    }
    uint32_t m = (uint32_t)strtoul(argv[2], NULL, 10);
    uint64_t seed = strtoull(argv[3], NULL, 10);
    long repeats = strtol(argv[4], NULL, 10);
    FILE *in = fopen(argv[1], "r");
    if (!in || m < 2 || repeats < 1) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    size_t n = 0, cap = 0;
    struct backend *be = NULL;
    char *line = NULL;
    size_t linecap = 0;
    while (getline(&line, &linecap, in) > 0) {
        char *id = strtok(line, " \n");
        char *w = strtok(NULL, " \n");
        if (!id)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            be = realloc(be, cap * sizeof(*be));
        }
        be[n].id = strdup(id);
        be[n].weight = w ? (uint32_t)strtoul(w, NULL, 10) : 1;
        be[n].line = (uint32_t)n;
        n++;
    }
    free(line);
    fclose(in);
    if (n == 0) {
        fprintf(stderr, "no backends\n");
        return 2;
    }

    uint32_t *table = malloc(m * sizeof(*table));
    uint32_t *offset = malloc(n * sizeof(*offset));
    uint32_t *skip = malloc(n * sizeof(*skip));
    uint32_t *next = malloc(n * sizeof(*next));
    uint64_t *credit = malloc(n * sizeof(*credit));
    uint64_t *ns = malloc((size_t)repeats * sizeof(*ns));
    struct backend *work = malloc(n * sizeof(*work));
    for (long r = 0; r < repeats; r++) {
        memcpy(work, be, n * sizeof(*be)); /* arrive in file order every time */
        uint64_t t0 = now_ns();
        build(work, n, m, seed, table, offset, skip, next, credit);
        ns[r] = now_ns() - t0;
    }
    qsort(ns, (size_t)repeats, sizeof(*ns), cmp_u64);
    printf("min_ns=%" PRIu64 " median_ns=%" PRIu64 "\n", ns[0], ns[repeats / 2]);

    FILE *out = fopen(argv[5], "wb");
    if (!out || fwrite(table, sizeof(*table), m, out) != m || fclose(out) != 0) {
        fprintf(stderr, "cannot write %s\n", argv[5]);
        return 1;
    }
    return 0;
}
