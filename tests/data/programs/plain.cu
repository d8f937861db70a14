// Prints no @@repro markers: the classifier must still work from the exit code and text.
#include <cstdio>
int main() { std::printf("PASS\n"); return 0; }
