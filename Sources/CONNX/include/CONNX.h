/// Umbrella header for the protobuf-c code generated from formats/onnx.proto (see formats/onnx.md).
#include "onnx.pb-c.h"
