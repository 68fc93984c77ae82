//! Unit tests of the pure execution core: driven input by input, with no runtime.
