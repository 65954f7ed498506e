/*
 * list - named lists an operator matches attributes against: networks,
 * domains, addresses and plain strings, inline in the config or loaded
 * from a file (one entry per line, '#' comments, blank lines ignored).
 *
 * Entry classification: something cidr_parse() accepts is a network;
 * text with '@' is an address (case-insensitive); anything else is a
 * domain/string (case-insensitive). A domain entry written ".example.com"
 * matches subdomains of example.com only; with the list option
 * subdomains=true, "example.com" matches itself and its subdomains.
 * An address value (user@dom) matches a list holding that address, or
 * holding its domain.
 *
 * Lookups are O(1) hashes for strings (plus one per label for domain
 * suffixes) and a binary search for networks; no allocation.
 *
 * File lists: list_data is immutable once built; list_refresh() checks
 * the file's mtime/size/inode and, if it changed, builds new data beside
 * the old and swaps it in (the old data is freed at once: evaluation never
 * holds list data across an asynchronous step). A file that fails to load
 * on refresh keeps the old data and reports why.
 * Pure except for reading list files.
 */
#ifndef SMTPGUARD_LIST_H
#define SMTPGUARD_LIST_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "cidr.h"

struct list_data;

struct list {
    char *name;                 /* as in the config */
    char *file;                 /* absolute path, or NULL for inline */
    bool subdomains;            /* "example.com" also matches a.example.com */
    struct list_data *data;     /* current contents, never NULL after load */
    struct timespec mtime;      /* of the file when data was loaded */
    off_t size;                 /* bytes, of the file when loaded */
    ino_t ino;                  /* of the file when loaded */
};

/* list_data building: add entries, then list_data_finish(). */
struct list_data *list_data_new(void);
/* list_data_add - one entry; returns 0 or -EINVAL with *why. */
int list_data_add(struct list_data *d, const char *entry, size_t len, const char **why);
void list_data_finish(struct list_data *d);
void list_data_free(struct list_data *d);
size_t list_data_count(const struct list_data *d); /* entries added */

/*
 * list_load_file - read path into fresh data. On a bad line, returns
 * -EINVAL with err filled as "PATH:LINE: problem"; on an I/O error a
 * negative errno with err filled. All bad lines are reported in err
 * (newline separated, truncated to errlen).
 */
int list_load_file(const char *path, struct list_data **out, char *err, size_t errlen);

/* list_refresh - reload a file list if the file changed. Returns 1 if
 * reloaded, 0 if unchanged or inline, negative errno (err filled) if the
 * new file could not be loaded (old data kept). */
int list_refresh(struct list *l, char *err, size_t errlen);

/* list_match_ip - is the address in one of the list's networks? */
bool list_match_ip(const struct list *l, const struct ipaddr *ip);
/*
 * list_match - match a value: an IP text is looked up as an address
 * (and as a string), an address as itself or its domain, a domain as
 * itself or (see above) its parents. Case-insensitive.
 */
bool list_match(const struct list *l, const char *value, size_t len);
/* list_match_addr - list_match for a value already parsed as ip (NULL:
 * not an address), so the parse is not repeated for every list. */
bool list_match_addr(const struct list *l, const char *value, size_t len,
                     const struct ipaddr *ip);

void list_free(struct list *l); /* frees name, file, data; not l itself */

#endif
