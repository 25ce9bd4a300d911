#include <stdio.h>

#include "greet.h"

int main(void)
{
    const char *names[] = {"make", "pytask", "cpbuild"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        greet(names[i]);
    }
    return 0;
}
