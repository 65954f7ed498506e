/*
 * replay - the main() of the gcc builds of the fuzzers: runs
 * LLVMFuzzerTestOneInput over every file (or every file of every
 * directory) named on the command line, so the seed corpus is a
 * regression test without clang. Not linked into libFuzzer builds,
 * which bring their own main().
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
#include <dirent.h>
#include <sys/stat.h>

/* fuzz_replay_file - run one corpus file; returns 0 or -1. */
static int fuzz_replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 4096, len = 0, n;
    uint8_t *data = malloc(cap);
    if (!data)
        abort();
    while ((n = fread(data + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            data = realloc(data, cap);
            if (!data)
                abort();
        }
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        fprintf(stderr, "%s: read error\n", path);
        free(data);
        return -1;
    }
    LLVMFuzzerTestOneInput(data, len);
    free(data);
    return 0;
}

int main(int argc, char **argv)
{
    unsigned files = 0, failed = 0;

    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            failed++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            failed += fuzz_replay_file(argv[i]) != 0;
            files++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (!d) {
            perror(argv[i]);
            failed++;
            continue;
        }
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            char path[4096];
            if (snprintf(path, sizeof path, "%s/%s", argv[i], de->d_name) >= (int)sizeof path) {
                failed++;
                continue;
            }
            if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
                continue;
            failed += fuzz_replay_file(path) != 0;
            files++;
        }
        closedir(d);
    }
    printf("%s: replayed %u inputs, %u unreadable\n", argv[0], files, failed);
    return failed ? 1 : 0;
}
