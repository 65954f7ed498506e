/*
 * fuzz_config - the YAML config loader on arbitrary text.
 *
 * Every input is loaded with file access disabled (includes, list files
 * and password files become errors, so the fuzzer never reads the
 * machine's files). A load must either give a config or at least one
 * diagnostic, and every diagnostic must carry "name:line:col:".
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        config_allow_files = false;
        log_threshold = LOG_LEVEL_ERROR; /* host-bit warnings would flood */
        once = 1;
    }
    struct config_errors errs = {0};
    struct config *cfg = config_load_string("fuzz.yaml", (const char *)data, size, &errs);
    if (!cfg && errs.n == 0)
        abort(); /* refused without saying why */
    for (size_t i = 0; i < errs.n; i++)
        if (strncmp(errs.msgs[i], "fuzz.yaml:", 10) != 0)
            abort(); /* a diagnostic without its place */
    config_errors_fini(&errs);
    config_unref(cfg);
    return 0;
}
