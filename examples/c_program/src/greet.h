#ifndef GREET_H
#define GREET_H

/* Print a greeting for `name` to standard output. */
void greet(const char *name);

#endif
