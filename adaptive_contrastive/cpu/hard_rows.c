/* The elementwise part of the reference backend's hard-mask forward, one row at a time.
 *
 * For each row of a block of similarities it computes what reference.py's `_hard_forward` computes with about a
 * dozen whole-block PyTorch passes: the suspected false negatives phi (above the threshold, or a known positive),
 * their count F and similarity sum, the log-sum-exp over the softmax denominator and the block dL/dl = P - y.
 * A row (a few KiB) stays in the L1 cache across the three loops below, so the block is read from memory once
 * and the result written once.
 *
 * Plain C with no headers beyond the C library: it is compiled at first use with the system's C compiler (see
 * build.py) and called through ctypes. The loops work on 16 lanes at a time through GCC's vector extensions (also
 * Clang's), branch-free; exp2 is a polynomial on those lanes (1.5 ulp, see exp2_lanes).
 */
#include <math.h>
#include <stdint.h>

#define LOG2E 1.4426950408889634f

/* 16 lanes as GCC/Clang vector extensions: AVX-512 where there is one, two AVX2 registers or four NEON ones
 * elsewhere. Comparisons give lanes of -1 (true) or 0. */
#define W 16
typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));

static inline vf splat(float x) { return (vf){0} + x; }
static inline vi splati(int32_t x) { return (vi){0} + x; }
static inline vf select(vi mask, vf yes, vf no) { return (vf)((mask & (vi)yes) | (~mask & (vi)no)); }

/* Lanes [j, j + W) of a row: one unaligned vector move (full), or lane by lane with zeros beyond n (a row's tail). */
typedef float vf_unaligned __attribute__((vector_size(4 * W), aligned(4)));
#define LOAD_FULL(row, j, n) (*(const vf_unaligned *)((row) + (j)))
#define STORE_FULL(row, j, n, v) (*(vf_unaligned *)((row) + (j)) = (v))
static inline vf load_tail(const float *row, int j, int n) {
    vf v = {0};
    for (int l = 0; l < n - j; ++l) v[l] = row[j + l];
    return v;
}
static inline void store_tail(float *row, int j, int n, vf v) {
    for (int l = 0; l < n - j; ++l) row[j + l] = v[l];
}
#define LOAD_TAIL load_tail
#define STORE_TAIL store_tail

static inline float lane_sum(vf v) {
    float total = 0.0f;
    for (int l = 0; l < W; ++l) total += v[l];
    return total;
}
static inline float lane_max(vf v) {
    float top = v[0];
    for (int l = 1; l < W; ++l) top = v[l] > top ? v[l] : top;
    return top;
}

/* 2^x for x <= 0 (clamped to 0 above), within 1.5 units in the last place, and exactly 0 below -100. The callers'
 * largest term is 1 and their sums are at least 1, so terms under 2^-100 are far below float resolution; flushing
 * them keeps the gradient block free of subnormal numbers, which would slow the matrix products that read it.
 * A degree-6 polynomial for 2^f on [0, 1), fitted for relative error; the integer part goes into the exponent bits. */
static inline vf exp2_lanes(vf x) {
    const vi negligible = x < splat(-100.0f);
    x = select(negligible, splat(-100.0f), x);
    x = select(x > splat(0.0f), splat(0.0f), x);
    vi whole = __builtin_convertvector(x, vi); /* rounds toward zero: one too high for negative non-integers */
    whole += (x < __builtin_convertvector(whole, vf)); /* true lanes are -1 */
    const vf f = x - __builtin_convertvector(whole, vf);
    vf p = splat(0.00021702573576476425f);
    p = p * f + 0.0012439728016033769f;
    p = p * f + 0.009678819216787815f;
    p = p * f + 0.055483363568782806f;
    p = p * f + 0.24022983014583588f;
    p = p * f + 0.6931470036506653f;
    p = p * f + 1.0f;
    return select(negligible, splat(0.0f), p * (vf)((whole + 127) << 23));
}

/* One row: s (similarities), g (gradient out); the mode's switches are compile-time constants in each caller. */
static inline void one_row(const float *s, float *g, int n, int p, int self, float t, float label,
                           const float *restrict labels, float inv_tau, float positive_weight, int masks, int soft,
                           int has_threshold, int has_labels, float *lse, float *partner_logit, float *fn_count,
                           float *phi_logit_sum) {
    const vi lanes = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const vi none = splati(0);
    const float scale = LOG2E * inv_tau;
    /* phi and the denominator's membership of lanes [j, j + W); `sj` holds their similarities. Each loop below runs
     * over the full vectors of a row, then once more, lane by lane, over its tail. */
#define MASKS_AT(j, sj, LOAD)                                                                            \
    const vi column = lanes + (j);                                                                       \
    const vi inside = column < splati(n);                                                                \
    const vi candidate = inside & (column != splati(p)) & (column != splati(self));                      \
    const vi above = has_threshold ? (sj > splat(t)) : none;                                             \
    const vi known = has_labels ? (LOAD(labels, (j), n) == splat(label)) : none;                         \
    const vi phi = candidate & (above | known);                                                          \
    const vi in_denominator = inside & (column != splati(self)) & (masks ? ~phi : ~none);
#define ROW_LOOP(STEP)                        \
    {                                         \
        int j = 0;                            \
        for (; j + W <= n; j += W) STEP(FULL) \
        if (j < n) STEP(TAIL)                 \
    }

    const float row_partner = s[p];
    const vi sign_bit = splati(INT32_MIN);

    /* Pass 1: phi, F, sum phi s and the denominator's maximum. */
    vf count = splat(0.0f), phi_sum = splat(0.0f), top = splat(-INFINITY);
#define PASS1(KIND)                                                \
    {                                                              \
        const vf sj = LOAD_##KIND(s, j, n);                        \
        MASKS_AT(j, sj, LOAD_##KIND)                               \
        count += select(phi, splat(1.0f), splat(0.0f));            \
        phi_sum += select(phi, sj, splat(0.0f));                   \
        const vf v = select(in_denominator, sj, splat(-INFINITY)); \
        top = select(v > top, v, top);                             \
    }
    ROW_LOOP(PASS1)
    const float row_top = lane_max(top), row_count = lane_sum(count);

    /* Pass 2: e^{l - max} on the denominator (0 elsewhere) and its sum, written to the gradient row with phi in the
     * sign bit (e is never negative), so that pass 3 needs no similarities: g may be s itself. */
    vf total = splat(0.0f);
#define PASS2(KIND)                                                                                  \
    {                                                                                                \
        const vf sj = LOAD_##KIND(s, j, n);                                                          \
        MASKS_AT(j, sj, LOAD_##KIND)                                                                 \
        (void)phi;                                                                                   \
        const vf e = select(in_denominator, exp2_lanes((sj - row_top) * scale), splat(0.0f));       \
        STORE_##KIND(g, j, n, (vf)((vi)e | (phi & sign_bit)));                                       \
        total += e;                                                                                  \
    }
    ROW_LOOP(PASS2)
    const float row_total = lane_sum(total);

    /* Pass 3: P - y, with y = (1 - alpha)/max(F, 1) on phi (read back from the sign) and 1 - sum_C y on the
     * partner. */
    const float spread = soft ? (1.0f - positive_weight) / (row_count > 1.0f ? row_count : 1.0f) : 0.0f;
    const float inv_total = 1.0f / row_total;
#define PASS3(KIND)                                                                                 \
    {                                                                                               \
        const vi stored = (vi)LOAD_##KIND(g, j, n);                                                 \
        const vi phi = (stored & sign_bit) != splati(0);                                            \
        const vf e = (vf)(stored & ~sign_bit);                                                      \
        STORE_##KIND(g, j, n, e * inv_total - select(phi, splat(spread), splat(0.0f)));            \
    }
    ROW_LOOP(PASS3)
#undef PASS1
#undef PASS2
#undef PASS3
#undef ROW_LOOP
#undef MASKS_AT
    g[p] -= 1.0f - spread * row_count;

    *lse = row_top * inv_tau + logf(row_total);
    *partner_logit = row_partner * inv_tau;
    *fn_count = row_count;
    *phi_logit_sum = lane_sum(phi_sum) * inv_tau;
}

/* Rows [row_begin, row_end) of a block `sims` of n_cols columns (row stride ld_sims, similarity units).
 *
 * thresholds:   per row, or NULL (no threshold: keep, or known positives alone)
 * row_labels, column_labels:  comparable labels as floats (reference.py's _comparable_labels), or both NULL
 * partner, self_index:  the partner column (always in the denominator, label y_p) and the left-out column
 * flags: bit 0 masks the denominator (drop/attract), bit 1 soft labels (attract/relabel), bit 2 uses phi at all
 * Outputs per row: lse, the partner's logit, F and sum_phi s / tau; grad (row stride ld_grad) gets P - y. grad may
 * be sims itself (the result overwrites the similarities row by row).
 */
void hard_rows(const float *sims, int64_t ld_sims, int64_t n_cols, int64_t row_begin, int64_t row_end,
               const float *thresholds, const float *row_labels, const float *column_labels,
               const int64_t *partner, const int64_t *self_index, float inv_tau, int flags, float positive_weight,
               float *grad, int64_t ld_grad, float *lse, float *partner_logit, float *fn_count,
               float *phi_logit_sum) {
    const int masks = flags & 1, soft = (flags >> 1) & 1, uses_phi = (flags >> 2) & 1;
    const int has_threshold = uses_phi && thresholds != 0;
    const int has_labels = uses_phi && row_labels != 0 && column_labels != 0;
    const int n = (int)n_cols;
    for (int64_t i = row_begin; i < row_end; ++i) {
        const float *s = sims + i * ld_sims;
        float *g = grad + i * ld_grad;
        const int p = (int)partner[i], self = (int)self_index[i];
        const float t = has_threshold ? thresholds[i] : 0.0f, label = has_labels ? row_labels[i] : 0.0f;
        /* Each mode gets its own copy of the loops, with its switches folded in. */
#define ROW(M, S, T, L)                                                                                      \
    one_row(s, g, n, p, self, t, label, column_labels, inv_tau, positive_weight, M, S, T, L, lse + i, \
            partner_logit + i, fn_count + i, phi_logit_sum + i)
        switch ((masks << 3) | (soft << 2) | (has_threshold << 1) | has_labels) {
        case 0: case 4: case 8: case 12: ROW(0, 0, 0, 0); break;
        case 1: ROW(0, 0, 0, 1); break;
        case 2: ROW(0, 0, 1, 0); break;
        case 3: ROW(0, 0, 1, 1); break;
        case 5: ROW(0, 1, 0, 1); break;
        case 6: ROW(0, 1, 1, 0); break;
        case 7: ROW(0, 1, 1, 1); break;
        case 9: ROW(1, 0, 0, 1); break;
        case 10: ROW(1, 0, 1, 0); break;
        case 11: ROW(1, 0, 1, 1); break;
        case 13: ROW(1, 1, 0, 1); break;
        case 14: ROW(1, 1, 1, 0); break;
        default: ROW(1, 1, 1, 1); break;
        }
#undef ROW
    }
}
