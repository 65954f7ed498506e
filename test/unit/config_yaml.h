/*
 * config_yaml.h - for unit tests: a config from YAML text that must load
 * (every error is printed and fails the test). Include after cmocka.h.
 */
#ifndef SMTPGUARD_TEST_CONFIG_YAML_H
#define SMTPGUARD_TEST_CONFIG_YAML_H

#include <string.h>

#include "config.h"

static inline struct config *config_from_yaml(const char *name, const char *yaml)
{
    struct config_errors errs = {0};
    struct config *c = config_load_string(name, yaml, strlen(yaml), &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_error("unexpected: %s\n", errs.msgs[i]);
    config_errors_fini(&errs);
    assert_non_null(c);
    return c;
}

#endif
