/*
 * ascii - locale-independent ASCII case folding.
 *
 * Counter keys, list entries and the values looked up in lists are
 * folded with this, never with tolower(): a locale must not change a key
 * or a match. Pure, no allocation.
 */
#ifndef SMTPGUARD_ASCII_H
#define SMTPGUARD_ASCII_H

#include <stddef.h>

/* ascii_lower - copy n bytes from src to dst, ASCII A-Z lower-cased,
 * eight bytes at a time. dst is src, or does not overlap it. */
void ascii_lower(char *dst, const char *src, size_t n);

#endif
