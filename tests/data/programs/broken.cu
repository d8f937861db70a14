// Fails to compile on purpose, the way the BlockScaledSm120 ptr-array tags do: a static_assert.
template <int SFVectorSize>
struct Config { static_assert(SFVectorSize == 32, "Incorrect SfVectorSize for MX_F4F6F8 is deduced."); };
int main() { Config<16> config; (void)config; return 0; }
