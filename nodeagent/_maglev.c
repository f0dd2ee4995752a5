/* placeholder: replaced by the Maglev implementation */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_maglev", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__maglev(void) { return PyModule_Create(&mod); }
