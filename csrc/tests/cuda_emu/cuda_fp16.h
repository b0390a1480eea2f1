// Stand-in for <cuda_fp16.h> in the CPU emulation of the CUDA kernels (see fd_cuda_emu.h).
#pragma once
#include "fd_cuda_emu.h"
