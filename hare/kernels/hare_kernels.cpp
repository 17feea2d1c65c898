// All of Hare's CPU kernels in one translation unit, so that a build parses PyTorch's headers (most of its
// time) once. Each kernel lives in its own file; hare/kernels/__init__.py builds and loads this one.

#include "decode_attention.cpp"
#include "group_norm.cpp"
#include "winograd.cpp"
#include "lvc.cpp"
#include "panel_linear.cpp"
#include "panel_int8.cpp"
#include "gpt_block.cpp"
#include "row_taps.cpp"
#include "conv_rows.cpp"
