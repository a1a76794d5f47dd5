/*
 * A stand-in for libnvidia-ml.so.1 that answers from a JSON machine fixture.
 *
 * It exports the NVML entry points the gpusched agent uses, with the C signatures and struct
 * layouts of nvml.h, so that pynvml's own ctypes wrappers (argument marshalling, struct types,
 * error codes) run unchanged on a machine without a GPU. The fixture is read on the first
 * nvmlInit* from the file named by $GPUSCHED_FAKE_NVML_MACHINE and dropped on the last
 * nvmlShutdown; the fixture format is described in gpu_agent/fake_nvml/README.md.
 *
 * Anything a fixture leaves out behaves like a driver that lacks it (NVML_ERROR_NOT_SUPPORTED),
 * and any entry point can be made to fail with a chosen code through an "errors" table on the
 * machine or on one GPU, e.g. {"nvmlDeviceGetUtilizationRates": 15} for a lost GPU.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------------ nvml.h subset */

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define NVML_NVLINK_MAX_LINKS 36
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE 32
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE 16
#define NVML_GPU_FABRIC_UUID_LEN 16
#define NVML_NVLINK_DEVICE_TYPE_GPU 0x00
#define NVML_NVLINK_DEVICE_TYPE_SWITCH 0x02
#define NVML_P2P_CAPS_INDEX_NVLINK 2
#define NVML_P2P_STATUS_OK 0
#define NVML_P2P_STATUS_NOT_SUPPORTED 5
#define NVML_TOPOLOGY_INTERNAL 0
#define NVML_TOPOLOGY_SINGLE 10
#define NVML_TOPOLOGY_MULTIPLE 20
#define NVML_TOPOLOGY_HOSTBRIDGE 30
#define NVML_TOPOLOGY_NODE 40
#define NVML_TOPOLOGY_SYSTEM 50
#define NVML_MEMORY_ERROR_TYPE_CORRECTED 0
#define NVML_MEMORY_ERROR_TYPE_UNCORRECTED 1
#define NVML_VOLATILE_ECC 0
#define NVML_AGGREGATE_ECC 1

typedef struct {
    char busIdLegacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned char clusterUuid[NVML_GPU_FABRIC_UUID_LEN];
    nvmlReturn_t status;
    uint32_t cliqueId;
    unsigned int state;
} nvmlGpuFabricInfo_t;

typedef struct {
    unsigned int version;
    unsigned char clusterUuid[NVML_GPU_FABRIC_UUID_LEN];
    nvmlReturn_t status;
    uint32_t cliqueId;
    unsigned int state;
    uint32_t healthMask;
} nvmlGpuFabricInfo_v2_t;
#define nvmlGpuFabricInfo_v2 ((unsigned int)(sizeof(nvmlGpuFabricInfo_v2_t) | (2u << 24)))

typedef struct {
    unsigned int version;
    unsigned char clusterUuid[NVML_GPU_FABRIC_UUID_LEN];
    nvmlReturn_t status;
    uint32_t cliqueId;
    unsigned int state;
    uint32_t healthMask;
    unsigned char healthSummary;
} nvmlGpuFabricInfo_v3_t;
#define nvmlGpuFabricInfo_v3 ((unsigned int)(sizeof(nvmlGpuFabricInfo_v3_t) | (3u << 24)))

typedef struct {
    unsigned int multiprocessorCount;
    unsigned int sharedCopyEngineCount;
    unsigned int sharedDecoderCount;
    unsigned int sharedEncoderCount;
    unsigned int sharedJpegCount;
    unsigned int sharedOfaCount;
    unsigned int gpuInstanceSliceCount;
    unsigned int computeInstanceSliceCount;
    unsigned long long memorySizeMB;
} nvmlDeviceAttributes_t;

/* ------------------------------------------------------------------ a small JSON reader */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
    jtype type;
    int boolean;
    double num;
    long long inum;
    char *str;
    size_t n;
    char **keys;
    struct jval **items;
} jval;

typedef struct {
    const char *p;
    const char *end;
    const char *error;
} jparser;

static void jfree(jval *v) {
    if (!v) return;
    free(v->str);
    for (size_t i = 0; i < v->n; i++) {
        if (v->keys) free(v->keys[i]);
        jfree(v->items[i]);
    }
    free(v->keys);
    free(v->items);
    free(v);
}

static void jskip(jparser *ps) {
    while (ps->p < ps->end && isspace((unsigned char)*ps->p)) ps->p++;
}

static jval *jnew(jtype type) {
    jval *v = calloc(1, sizeof(jval));
    if (v) v->type = type;
    return v;
}

static jval *jparse_value(jparser *ps, int depth);

static int jappend(jval *v, char *key, jval *item) {
    char **keys = v->keys;
    if (v->type == J_OBJ) {
        keys = realloc(v->keys, (v->n + 1) * sizeof(char *));
        if (!keys) return -1;
        v->keys = keys;
    }
    jval **items = realloc(v->items, (v->n + 1) * sizeof(jval *));
    if (!items) return -1;
    v->items = items;
    if (v->type == J_OBJ) v->keys[v->n] = key;
    v->items[v->n] = item;
    v->n++;
    return 0;
}

static void utf8_put(char **out, unsigned int cp) {
    char *o = *out;
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    *out = o;
}

static int hex4(const char *p, unsigned int *cp) {
    unsigned int value = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        value <<= 4;
        if (c >= '0' && c <= '9') value |= (unsigned int)(c - '0');
        else if (c >= 'a' && c <= 'f') value |= (unsigned int)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') value |= (unsigned int)(c - 'A' + 10);
        else return -1;
    }
    *cp = value;
    return 0;
}

static char *jparse_string(jparser *ps) {
    if (ps->p >= ps->end || *ps->p != '"') {
        ps->error = "expected a string";
        return NULL;
    }
    ps->p++;
    const char *start = ps->p;
    size_t cap = 1;
    while (ps->p < ps->end && *ps->p != '"') {
        if (*ps->p == '\\') ps->p++;
        ps->p++;
        cap++;
    }
    if (ps->p >= ps->end) {
        ps->error = "unterminated string";
        return NULL;
    }
    char *out = malloc(cap * 4);
    if (!out) {
        ps->error = "out of memory";
        return NULL;
    }
    char *o = out;
    for (const char *s = start; s < ps->p; s++) {
        if (*s != '\\') {
            *o++ = *s;
            continue;
        }
        s++;
        switch (*s) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '/': *o++ = '/'; break;
            case 'b': *o++ = '\b'; break;
            case 'f': *o++ = '\f'; break;
            case 'n': *o++ = '\n'; break;
            case 'r': *o++ = '\r'; break;
            case 't': *o++ = '\t'; break;
            case 'u': {
                unsigned int cp;
                if (ps->p - s < 5 || hex4(s + 1, &cp) != 0) {
                    free(out);
                    ps->error = "bad \\u escape";
                    return NULL;
                }
                s += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && ps->p - s >= 7 && s[1] == '\\' && s[2] == 'u') {
                    unsigned int low;
                    if (hex4(s + 3, &low) == 0 && low >= 0xDC00 && low < 0xE000) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                        s += 6;
                    }
                }
                utf8_put(&o, cp);
                break;
            }
            default:
                free(out);
                ps->error = "bad escape";
                return NULL;
        }
    }
    *o = '\0';
    ps->p++;
    return out;
}

static jval *jparse_number(jparser *ps) {
    const char *start = ps->p;
    int is_int = 1;
    if (ps->p < ps->end && (*ps->p == '-' || *ps->p == '+')) ps->p++;
    while (ps->p < ps->end && (isdigit((unsigned char)*ps->p) || strchr(".eE+-", *ps->p))) {
        if (strchr(".eE", *ps->p)) is_int = 0;
        ps->p++;
    }
    size_t len = (size_t)(ps->p - start);
    if (len == 0 || len > 63) {
        ps->error = "bad number";
        return NULL;
    }
    char buf[64];
    memcpy(buf, start, len);
    buf[len] = '\0';
    jval *v = jnew(J_NUM);
    if (!v) return NULL;
    char *endp;
    errno = 0;
    v->num = strtod(buf, &endp);
    if (*endp != '\0' || errno) {
        free(v);
        ps->error = "bad number";
        return NULL;
    }
    if (is_int) {
        v->inum = buf[0] == '-' ? strtoll(buf, NULL, 10) : (long long)strtoull(buf, NULL, 10);
    } else {
        v->inum = (long long)v->num;
    }
    return v;
}

static int jliteral(jparser *ps, const char *word) {
    size_t len = strlen(word);
    if ((size_t)(ps->end - ps->p) >= len && strncmp(ps->p, word, len) == 0) {
        ps->p += len;
        return 1;
    }
    return 0;
}

static jval *jparse_value(jparser *ps, int depth) {
    if (depth > 64) {
        ps->error = "nested too deeply";
        return NULL;
    }
    jskip(ps);
    if (ps->p >= ps->end) {
        ps->error = "unexpected end of input";
        return NULL;
    }
    char c = *ps->p;
    if (c == '{' || c == '[') {
        int is_obj = c == '{';
        char close = is_obj ? '}' : ']';
        jval *v = jnew(is_obj ? J_OBJ : J_ARR);
        if (!v) return NULL;
        ps->p++;
        jskip(ps);
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return v;
        }
        for (;;) {
            char *key = NULL;
            if (is_obj) {
                jskip(ps);
                key = jparse_string(ps);
                if (!key) break;
                jskip(ps);
                if (ps->p >= ps->end || *ps->p != ':') {
                    free(key);
                    ps->error = "expected ':'";
                    break;
                }
                ps->p++;
            }
            jval *item = jparse_value(ps, depth + 1);
            if (!item || jappend(v, key, item) != 0) {
                free(key);
                jfree(item);
                break;
            }
            jskip(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == close) {
                ps->p++;
                return v;
            }
            ps->error = is_obj ? "expected ',' or '}'" : "expected ',' or ']'";
            break;
        }
        if (!ps->error) ps->error = "out of memory";
        jfree(v);
        return NULL;
    }
    if (c == '"') {
        char *s = jparse_string(ps);
        if (!s) return NULL;
        jval *v = jnew(J_STR);
        if (!v) {
            free(s);
            return NULL;
        }
        v->str = s;
        return v;
    }
    if (jliteral(ps, "true") || jliteral(ps, "false")) {
        jval *v = jnew(J_BOOL);
        if (v) v->boolean = ps->p[-1] == 'e' && ps->p[-2] == 'u';
        return v;
    }
    if (jliteral(ps, "null")) return jnew(J_NULL);
    return jparse_number(ps);
}

static const jval *jget(const jval *obj, const char *key) {
    if (!obj || obj->type != J_OBJ) return NULL;
    for (size_t i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0) return obj->items[i];
    return NULL;
}

static long long jint(const jval *obj, const char *key, long long fallback) {
    const jval *v = jget(obj, key);
    if (v && v->type == J_NUM) return v->inum;
    if (v && v->type == J_BOOL) return v->boolean;
    return fallback;
}

static const char *jstr(const jval *obj, const char *key, const char *fallback) {
    const jval *v = jget(obj, key);
    return v && v->type == J_STR ? v->str : fallback;
}

/* ------------------------------------------------------------------ the machine */

#define DEVICE_MAGIC 0x4e564d4cu /* "NVML" */

typedef struct {
    int active;
    int remote_type;        /* NVML_NVLINK_DEVICE_TYPE_* */
    int remote_gpu;         /* index of the GPU at the far end, or -1 */
    int remote_switch;      /* index into the machine's switches, or -1 */
} fake_link;

typedef struct fake_device {
    unsigned int magic;
    int index;                   /* GPU index, or the slot of a MIG device under its parent */
    int is_mig;
    struct fake_device *parent;  /* for MIG devices */
    const jval *spec;            /* the fixture object of this device */
    int nlinks;                  /* -1 when the device has no NVLink at all */
    fake_link links[NVML_NVLINK_MAX_LINKS];
    struct fake_device *migs;
    int nmigs;
} fake_device;

typedef fake_device *nvmlDevice_t;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_refcount = 0;
static jval *g_machine = NULL;
static fake_device *g_devices = NULL;
static int g_ndevices = 0;

static void machine_free(void) {
    if (g_devices) {
        for (int i = 0; i < g_ndevices; i++) free(g_devices[i].migs);
        free(g_devices);
    }
    jfree(g_machine);
    g_devices = NULL;
    g_ndevices = 0;
    g_machine = NULL;
}

static const jval *gpu_specs(void) {
    const jval *gpus = jget(g_machine, "gpus");
    return gpus && gpus->type == J_ARR ? gpus : NULL;
}

static const jval *switch_spec(int index) {
    const jval *switches = jget(g_machine, "switches");
    if (!switches || switches->type != J_ARR || index < 0 || (size_t)index >= switches->n) return NULL;
    return switches->items[index];
}

static int build_links(fake_device *dev) {
    const jval *groups = jget(dev->spec, "nvlinks");
    dev->nlinks = -1;
    if (!groups || groups->type != J_ARR) return 0;
    dev->nlinks = 0;
    for (size_t g = 0; g < groups->n; g++) {
        const jval *group = groups->items[g];
        long long count = jint(group, "count", 1);
        int active = (int)jint(group, "active", 1);
        const jval *remote = jget(group, "remote");
        int rgpu = (int)jint(remote, "gpu", -1);
        int rswitch = (int)jint(remote, "switch", -1);
        if (rgpu < 0 && rswitch < 0) return -1;
        if (rgpu >= g_ndevices || (rswitch >= 0 && !switch_spec(rswitch))) return -1;
        for (long long k = 0; k < count; k++) {
            if (dev->nlinks >= NVML_NVLINK_MAX_LINKS) return -1;
            fake_link *link = &dev->links[dev->nlinks++];
            link->active = active;
            link->remote_gpu = rgpu;
            link->remote_switch = rswitch;
            link->remote_type = rgpu >= 0 ? NVML_NVLINK_DEVICE_TYPE_GPU : NVML_NVLINK_DEVICE_TYPE_SWITCH;
        }
    }
    return 0;
}

static nvmlReturn_t machine_load(void) {
    const char *path = getenv("GPUSCHED_FAKE_NVML_MACHINE");
    if (!path || !*path) {
        fprintf(stderr, "fake NVML: GPUSCHED_FAKE_NVML_MACHINE is not set; no driver to talk to\n");
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fake NVML: cannot open machine fixture %s: %s\n", path, strerror(errno));
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    size_t got;
    while (text && (got = fread(text + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            char *bigger = realloc(text, cap * 2);
            if (!bigger) {
                free(text);
                text = NULL;
                break;
            }
            text = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (!text) return NVML_ERROR_UNKNOWN;
    jparser ps = {text, text + len, NULL};
    g_machine = jparse_value(&ps, 0);
    jskip(&ps);
    if (g_machine && ps.p != ps.end) ps.error = "trailing characters";
    if (!g_machine || ps.error || g_machine->type != J_OBJ) {
        fprintf(stderr, "fake NVML: %s: invalid JSON at byte %ld: %s\n", path, (long)(ps.p - text),
                ps.error ? ps.error : "top level must be an object");
        free(text);
        machine_free();
        return NVML_ERROR_UNKNOWN;
    }
    free(text);

    long long init_error = jint(g_machine, "initError", 0);
    if (init_error) {
        machine_free();
        return (nvmlReturn_t)init_error;
    }
    const jval *gpus = gpu_specs();
    g_ndevices = gpus ? (int)gpus->n : 0;
    g_devices = calloc((size_t)(g_ndevices ? g_ndevices : 1), sizeof(fake_device));
    if (!g_devices) {
        machine_free();
        return NVML_ERROR_UNKNOWN;
    }
    for (int i = 0; i < g_ndevices; i++) {
        fake_device *dev = &g_devices[i];
        dev->magic = DEVICE_MAGIC;
        dev->index = i;
        dev->spec = gpus->items[i];
        dev->nlinks = -1;
    }
    for (int i = 0; i < g_ndevices; i++) {
        fake_device *dev = &g_devices[i];
        if (build_links(dev) != 0) {
            fprintf(stderr, "fake NVML: %s: GPU %d has a bad nvlinks entry\n", path, i);
            machine_free();
            return NVML_ERROR_UNKNOWN;
        }
        const jval *migs = jget(jget(dev->spec, "mig"), "devices");
        if (migs && migs->type == J_ARR && migs->n > 0) {
            dev->nmigs = (int)migs->n;
            dev->migs = calloc(migs->n, sizeof(fake_device));
            if (!dev->migs) {
                machine_free();
                return NVML_ERROR_UNKNOWN;
            }
            for (int m = 0; m < dev->nmigs; m++) {
                fake_device *mig = &dev->migs[m];
                mig->magic = DEVICE_MAGIC;
                mig->index = m;
                mig->is_mig = 1;
                mig->parent = dev;
                mig->spec = migs->items[m];
                mig->nlinks = -1;
            }
        }
    }
    return NVML_SUCCESS;
}

/* The code an "errors" table assigns to this entry point (else to "*", every entry point), or
 * NVML_SUCCESS. */
static nvmlReturn_t injected(const jval *spec, const char *function) {
    const jval *errors = jget(spec, "errors");
    long long code = jint(errors, function, -1);
    if (code < 0) code = jint(errors, "*", NVML_SUCCESS);
    return (nvmlReturn_t)code;
}

#define REQUIRE_INIT()                                      \
    do {                                                    \
        if (g_refcount <= 0) return NVML_ERROR_UNINITIALIZED; \
    } while (0)

#define SYSTEM_ENTRY()                                                  \
    REQUIRE_INIT();                                                     \
    do {                                                                \
        nvmlReturn_t _err = injected(g_machine, __func__);              \
        if (_err) return _err;                                          \
    } while (0)

static int valid_device(const fake_device *dev) {
    if (!dev) return 0;
    for (int i = 0; i < g_ndevices; i++) {
        if (dev == &g_devices[i]) return 1;
        if (g_devices[i].migs && dev >= g_devices[i].migs && dev < g_devices[i].migs + g_devices[i].nmigs)
            return 1;
    }
    return 0;
}

/* Checks shared by every per-device entry point: initialised, a handle we gave out, and no
 * injected failure for this function on the device (or, for a MIG device, on its parent). */
#define DEVICE_ENTRY(dev)                                                                 \
    REQUIRE_INIT();                                                                       \
    if (!valid_device(dev)) return NVML_ERROR_INVALID_ARGUMENT;                           \
    do {                                                                                  \
        nvmlReturn_t _err = injected((dev)->spec, __func__);                              \
        if (!_err && (dev)->is_mig) _err = injected((dev)->parent->spec, __func__);       \
        if (_err) return _err;                                                            \
    } while (0)

/* Entry points that only a full GPU answers; MIG device handles get NOT_SUPPORTED. */
#define GPU_ONLY(dev)                                    \
    do {                                                 \
        if ((dev)->is_mig) return NVML_ERROR_NOT_SUPPORTED; \
    } while (0)

static nvmlReturn_t copy_string(char *out, unsigned int length, const char *value) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (!value) return NVML_ERROR_NOT_SUPPORTED;
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

static void parse_bus_id(const char *text, unsigned int *domain, unsigned int *bus, unsigned int *device,
                         unsigned int *function) {
    *domain = *bus = *device = *function = 0;
    if (text) sscanf(text, "%x:%x:%x.%x", domain, bus, device, function);
}

static nvmlReturn_t fill_pci(const jval *spec, nvmlPciInfo_t *pci) {
    const char *bus_id = jstr(spec, "busId", NULL);
    if (!bus_id) return NVML_ERROR_NOT_SUPPORTED;
    unsigned int domain, bus, device, function;
    parse_bus_id(bus_id, &domain, &bus, &device, &function);
    memset(pci, 0, sizeof(*pci));
    pci->domain = domain;
    pci->bus = bus;
    pci->device = device;
    pci->pciDeviceId = (unsigned int)jint(spec, "pciDeviceId", 0);
    pci->pciSubSystemId = (unsigned int)jint(spec, "pciSubSystemId", 0);
    snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), "%04X:%02X:%02X.%X", domain & 0xFFFF, bus, device,
             function);
    snprintf(pci->busId, sizeof(pci->busId), "%08X:%02X:%02X.%X", domain, bus, device, function);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ init and system */

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    nvmlReturn_t ret = NVML_SUCCESS;
    pthread_mutex_lock(&g_lock);
    if (g_refcount == 0) ret = machine_load();
    if (ret == NVML_SUCCESS) g_refcount++;
    pthread_mutex_unlock(&g_lock);
    return ret;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

EXPORT nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&g_lock);
    if (g_refcount <= 0) {
        pthread_mutex_unlock(&g_lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    if (--g_refcount == 0) machine_free();
    pthread_mutex_unlock(&g_lock);
    return NVML_SUCCESS;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
        case 0: return "Success";
        case 1: return "Uninitialized";
        case 2: return "Invalid Argument";
        case 3: return "Not Supported";
        case 4: return "Insufficient Permissions";
        case 5: return "Already Initialized";
        case 6: return "Not Found";
        case 7: return "Insufficient Size";
        case 8: return "Insufficient External Power";
        case 9: return "Driver Not Loaded";
        case 10: return "Timeout";
        case 11: return "Interrupt Request Issue";
        case 12: return "NVML Shared Library Not Found";
        case 13: return "Function Not Found";
        case 14: return "Corrupted infoROM";
        case 15: return "GPU is lost";
        case 16: return "GPU requires restart";
        case 17: return "The operating system has blocked the request.";
        case 18: return "RM has detected an NVML/RM version mismatch.";
        case 19: return "In use by another client";
        case 20: return "Insufficient Memory";
        case 21: return "No data";
        case 25: return "Argument version mismatch";
        case 27: return "Not Ready";
        case 28: return "GPU Not Found";
        default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    SYSTEM_ENTRY();
    return copy_string(version, length, jstr(g_machine, "driverVersion", NULL));
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    SYSTEM_ENTRY();
    return copy_string(version, length, jstr(g_machine, "nvmlVersion", NULL));
}

static nvmlReturn_t cuda_version(int *out) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    long long v = jint(g_machine, "cudaDriverVersion", -1);
    if (v < 0) return NVML_ERROR_NOT_SUPPORTED;
    *out = (int)v;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion) {
    SYSTEM_ENTRY();
    return cuda_version(cudaDriverVersion);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion) {
    SYSTEM_ENTRY();
    return cuda_version(cudaDriverVersion);
}

/* ------------------------------------------------------------------ device enumeration */

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    SYSTEM_ENTRY();
    if (!deviceCount) return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = (unsigned int)g_ndevices;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount) { return nvmlDeviceGetCount_v2(deviceCount); }

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    SYSTEM_ENTRY();
    if (!device || index >= (unsigned int)g_ndevices) return NVML_ERROR_INVALID_ARGUMENT;
    /* Handles are given out even for a GPU whose queries all fail (a "*" error): as the real
     * library does for a GPU that fell off the bus; only an explicit entry refuses the handle. */
    nvmlReturn_t err = (nvmlReturn_t)jint(jget(g_devices[index].spec, "errors"), "nvmlDeviceGetHandleByIndex_v2", 0);
    if (err) return err;
    *device = &g_devices[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    if (!index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned int)device->index;
    return NVML_SUCCESS;
}

/* The minor number of /dev/nvidia<N>, which the DRA driver names GPUs by ("gpu-<N>"); the
   fixture's "minorNumber", else the index (the usual case, not a rule). */
EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    if (!minorNumber) return NVML_ERROR_INVALID_ARGUMENT;
    *minorNumber = (unsigned int)jint(device->spec, "minorNumber", device->index);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    DEVICE_ENTRY(device);
    return copy_string(name, length, jstr(device->spec, "name", NULL));
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    DEVICE_ENTRY(device);
    return copy_string(uuid, length, jstr(device->spec, "uuid", NULL));
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    DEVICE_ENTRY(device);
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    return fill_pci(device->is_mig ? device->parent->spec : device->spec, pci);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    return nvmlDeviceGetPciInfo_v3(device, pci);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    return nvmlDeviceGetPciInfo_v3(device, pci);
}

/* ------------------------------------------------------------------ memory and utilisation */

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    DEVICE_ENTRY(device);
    const jval *spec = jget(device->spec, "memory");
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (!spec) return NVML_ERROR_NOT_SUPPORTED;
    /* The v1 call counts driver-reserved memory as used. */
    unsigned long long total = (unsigned long long)jint(spec, "total", 0);
    unsigned long long used = (unsigned long long)(jint(spec, "used", 0) + jint(spec, "reserved", 0));
    memory->total = total;
    memory->used = used > total ? total : used;
    memory->free = total - memory->used;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    DEVICE_ENTRY(device);
    const jval *spec = jget(device->spec, "memory");
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (!spec) return NVML_ERROR_NOT_SUPPORTED;
    unsigned long long total = (unsigned long long)jint(spec, "total", 0);
    unsigned long long reserved = (unsigned long long)jint(spec, "reserved", 0);
    unsigned long long used = (unsigned long long)jint(spec, "used", 0);
    if (reserved > total) reserved = total;
    if (used > total - reserved) used = total - reserved;
    memory->total = total;
    memory->reserved = reserved;
    memory->used = used;
    memory->free = total - reserved - used;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    const jval *spec = jget(device->spec, "utilization");
    if (!utilization) return NVML_ERROR_INVALID_ARGUMENT;
    if (!spec) return NVML_ERROR_NOT_SUPPORTED;
    utilization->gpu = (unsigned int)jint(spec, "gpu", 0);
    utilization->memory = (unsigned int)jint(spec, "memory", 0);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ health */

EXPORT nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    const jval *ecc = jget(device->spec, "ecc");
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    if (!ecc) return NVML_ERROR_NOT_SUPPORTED;
    *current = (unsigned int)jint(ecc, "enabled", 1);
    *pending = (unsigned int)jint(ecc, "pendingEnabled", *current);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int errorType, int counterType,
                                                unsigned long long *eccCounts) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    const jval *ecc = jget(device->spec, "ecc");
    if (!eccCounts) return NVML_ERROR_INVALID_ARGUMENT;
    if (!ecc || !jint(ecc, "enabled", 1)) return NVML_ERROR_NOT_SUPPORTED;
    const char *key;
    if (errorType == NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
        key = counterType == NVML_VOLATILE_ECC ? "uncorrectedVolatile" : "uncorrectedAggregate";
    else if (errorType == NVML_MEMORY_ERROR_TYPE_CORRECTED)
        key = counterType == NVML_VOLATILE_ECC ? "correctedVolatile" : "correctedAggregate";
    else
        return NVML_ERROR_INVALID_ARGUMENT;
    if (counterType != NVML_VOLATILE_ECC && counterType != NVML_AGGREGATE_ECC) return NVML_ERROR_INVALID_ARGUMENT;
    *eccCounts = (unsigned long long)jint(ecc, key, 0);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device, unsigned int *isPending) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    const jval *pages = jget(device->spec, "retiredPages");
    if (!isPending) return NVML_ERROR_INVALID_ARGUMENT;
    if (!pages) return NVML_ERROR_NOT_SUPPORTED;
    *isPending = (unsigned int)jint(pages, "pending", 0);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows, unsigned int *uncRows,
                                              unsigned int *isPending, unsigned int *failureOccurred) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    const jval *rows = jget(device->spec, "remappedRows");
    if (!corrRows || !uncRows || !isPending || !failureOccurred) return NVML_ERROR_INVALID_ARGUMENT;
    if (!rows) return NVML_ERROR_NOT_SUPPORTED;
    *corrRows = (unsigned int)jint(rows, "corrected", 0);
    *uncRows = (unsigned int)jint(rows, "uncorrected", 0);
    *isPending = (unsigned int)jint(rows, "pending", 0);
    *failureOccurred = (unsigned int)jint(rows, "failure", 0);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ NVLink and topology */

static nvmlReturn_t link_of(nvmlDevice_t device, unsigned int link, const fake_link **out) {
    if (device->is_mig || device->nlinks < 0) return NVML_ERROR_NOT_SUPPORTED;
    if (link >= NVML_NVLINK_MAX_LINKS) return NVML_ERROR_INVALID_ARGUMENT;
    if ((int)link >= device->nlinks) return NVML_ERROR_NOT_SUPPORTED;
    *out = &device->links[link];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link, unsigned int *isActive) {
    DEVICE_ENTRY(device);
    const fake_link *l;
    if (!isActive) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = link_of(device, link, &l);
    if (ret) return ret;
    *isActive = (unsigned int)l->active;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t device, unsigned int link, nvmlPciInfo_t *pci) {
    DEVICE_ENTRY(device);
    const fake_link *l;
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = link_of(device, link, &l);
    if (ret) return ret;
    if (l->remote_gpu >= 0) return fill_pci(g_devices[l->remote_gpu].spec, pci);
    return fill_pci(switch_spec(l->remote_switch), pci);
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo(nvmlDevice_t device, unsigned int link, nvmlPciInfo_t *pci) {
    return nvmlDeviceGetNvLinkRemotePciInfo_v2(device, link, pci);
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType(nvmlDevice_t device, unsigned int link,
                                                        unsigned int *remoteType) {
    DEVICE_ENTRY(device);
    const fake_link *l;
    if (!remoteType) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = link_of(device, link, &l);
    if (ret) return ret;
    *remoteType = (unsigned int)l->remote_type;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkVersion(nvmlDevice_t device, unsigned int link, unsigned int *version) {
    DEVICE_ENTRY(device);
    const fake_link *l;
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = link_of(device, link, &l);
    if (ret) return ret;
    *version = (unsigned int)jint(device->spec, "nvlinkVersion", 4);
    return NVML_SUCCESS;
}

/* Active NVLink links between two GPUs: direct links, or links into NVSwitches both reach. */
static int nvlink_paths(const fake_device *a, const fake_device *b) {
    int direct = 0;
    for (int i = 0; i < a->nlinks; i++)
        if (a->links[i].active && a->links[i].remote_gpu == b->index) direct++;
    if (direct) return direct;
    int via_switch = 0;
    for (int i = 0; i < a->nlinks; i++) {
        if (!a->links[i].active || a->links[i].remote_switch < 0) continue;
        for (int j = 0; j < b->nlinks; j++) {
            if (b->links[j].active && b->links[j].remote_switch == a->links[i].remote_switch) {
                via_switch++;
                break;
            }
        }
    }
    return via_switch;
}

EXPORT nvmlReturn_t nvmlDeviceGetP2PStatus(nvmlDevice_t device1, nvmlDevice_t device2, int p2pIndex,
                                           int *p2pStatus) {
    DEVICE_ENTRY(device1);
    DEVICE_ENTRY(device2);
    GPU_ONLY(device1);
    GPU_ONLY(device2);
    if (!p2pStatus) return NVML_ERROR_INVALID_ARGUMENT;
    if (p2pIndex != NVML_P2P_CAPS_INDEX_NVLINK) {
        *p2pStatus = NVML_P2P_STATUS_OK;
        return NVML_SUCCESS;
    }
    *p2pStatus = device1 != device2 && nvlink_paths(device1, device2) > 0 ? NVML_P2P_STATUS_OK
                                                                          : NVML_P2P_STATUS_NOT_SUPPORTED;
    return NVML_SUCCESS;
}

/* The PCIe path of a GPU is a list of names from the CPU socket down: [numa, hostBridge,
 * switch, switch, ...]. Where two paths part says how far apart the GPUs are. */
EXPORT nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t device1, nvmlDevice_t device2,
                                                        unsigned int *pathInfo) {
    DEVICE_ENTRY(device1);
    DEVICE_ENTRY(device2);
    GPU_ONLY(device1);
    GPU_ONLY(device2);
    if (!pathInfo) return NVML_ERROR_INVALID_ARGUMENT;
    if (device1 == device2) {
        *pathInfo = NVML_TOPOLOGY_INTERNAL;
        return NVML_SUCCESS;
    }
    const jval *pa = jget(device1->spec, "pciePath");
    const jval *pb = jget(device2->spec, "pciePath");
    if (!pa || !pb || pa->type != J_ARR || pb->type != J_ARR) return NVML_ERROR_NOT_SUPPORTED;
    size_t common = 0;
    while (common < pa->n && common < pb->n && pa->items[common]->type == J_STR &&
           pb->items[common]->type == J_STR && strcmp(pa->items[common]->str, pb->items[common]->str) == 0)
        common++;
    if (common == 0) *pathInfo = NVML_TOPOLOGY_SYSTEM;          /* different CPU sockets */
    else if (common == 1) *pathInfo = NVML_TOPOLOGY_NODE;       /* same NUMA node, other host bridge */
    else if (common == 2) *pathInfo = NVML_TOPOLOGY_HOSTBRIDGE; /* same host bridge, no shared switch */
    else if (pa->n == common && pb->n == common) *pathInfo = NVML_TOPOLOGY_SINGLE; /* same leaf switch */
    else *pathInfo = NVML_TOPOLOGY_MULTIPLE;                    /* a shared switch higher up */
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ fabric (multi-node NVLink) */

static nvmlReturn_t fabric_fields(nvmlDevice_t device, unsigned char uuid[NVML_GPU_FABRIC_UUID_LEN],
                                  nvmlReturn_t *status, uint32_t *clique, unsigned int *state, uint32_t *health,
                                  unsigned char *summary) {
    const jval *fabric = jget(device->spec, "fabric");
    if (device->is_mig || !fabric) return NVML_ERROR_NOT_SUPPORTED;
    memset(uuid, 0, NVML_GPU_FABRIC_UUID_LEN);
    const char *hex = jstr(fabric, "clusterUuid", "");
    size_t k = 0;
    for (const char *s = hex; *s && s[1] && k < NVML_GPU_FABRIC_UUID_LEN; s++) {
        if (*s == '-') continue;
        unsigned int byte;
        if (sscanf(s, "%2x", &byte) != 1) break;
        uuid[k++] = (unsigned char)byte;
        s++;
    }
    *status = (nvmlReturn_t)jint(fabric, "status", NVML_SUCCESS);
    *clique = (uint32_t)jint(fabric, "cliqueId", 0);
    *state = (unsigned int)jint(fabric, "state", 3);
    *health = (uint32_t)jint(fabric, "healthMask", 0);
    *summary = (unsigned char)jint(fabric, "healthSummary", 0);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuFabricInfo(nvmlDevice_t device, nvmlGpuFabricInfo_t *info) {
    DEVICE_ENTRY(device);
    if (!info) return NVML_ERROR_INVALID_ARGUMENT;
    uint32_t health;
    unsigned char summary;
    return fabric_fields(device, info->clusterUuid, &info->status, &info->cliqueId, &info->state, &health,
                         &summary);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuFabricInfoV(nvmlDevice_t device, void *info) {
    DEVICE_ENTRY(device);
    if (!info) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int version = *(unsigned int *)info;
    unsigned char summary;
    if (version == nvmlGpuFabricInfo_v2) {
        nvmlGpuFabricInfo_v2_t *v2 = info;
        return fabric_fields(device, v2->clusterUuid, &v2->status, &v2->cliqueId, &v2->state, &v2->healthMask,
                             &summary);
    }
    if (version == nvmlGpuFabricInfo_v3) {
        nvmlGpuFabricInfo_v3_t *v3 = info;
        return fabric_fields(device, v3->clusterUuid, &v3->status, &v3->cliqueId, &v3->state, &v3->healthMask,
                             &v3->healthSummary);
    }
    return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
}

/* ------------------------------------------------------------------ MIG */

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    const jval *mig = jget(device->spec, "mig");
    if (!currentMode || !pendingMode) return NVML_ERROR_INVALID_ARGUMENT;
    if (!mig) return NVML_ERROR_NOT_SUPPORTED;
    *currentMode = (unsigned int)jint(mig, "current", 0);
    *pendingMode = (unsigned int)jint(mig, "pending", *currentMode);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    const jval *mig = jget(device->spec, "mig");
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (!mig) return NVML_ERROR_NOT_SUPPORTED;
    *count = jint(mig, "current", 0) ? (unsigned int)jint(mig, "maxDevices", device->nmigs) : 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                        nvmlDevice_t *migDevice) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    const jval *mig = jget(device->spec, "mig");
    if (!migDevice) return NVML_ERROR_INVALID_ARGUMENT;
    if (!mig) return NVML_ERROR_NOT_SUPPORTED;
    if (!jint(mig, "current", 0)) return NVML_ERROR_INVALID_ARGUMENT;
    if (index >= (unsigned int)jint(mig, "maxDevices", device->nmigs)) return NVML_ERROR_INVALID_ARGUMENT;
    if (index >= (unsigned int)device->nmigs) return NVML_ERROR_NOT_FOUND;
    *migDevice = &device->migs[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice) {
    DEVICE_ENTRY(device);
    if (!isMigDevice) return NVML_ERROR_INVALID_ARGUMENT;
    *isMigDevice = (unsigned int)device->is_mig;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice, nvmlDevice_t *device) {
    DEVICE_ENTRY(migDevice);
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    if (!migDevice->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *device = migDevice->parent;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    DEVICE_ENTRY(device);
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    if (!device->is_mig) return NVML_ERROR_NOT_SUPPORTED;
    *id = (unsigned int)jint(device->spec, "gpuInstanceId", 0);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    DEVICE_ENTRY(device);
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    if (!device->is_mig) return NVML_ERROR_NOT_SUPPORTED;
    *id = (unsigned int)jint(device->spec, "computeInstanceId", 0);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t device, nvmlDeviceAttributes_t *attributes) {
    DEVICE_ENTRY(device);
    const jval *attrs = jget(device->spec, "attributes");
    if (!attributes) return NVML_ERROR_INVALID_ARGUMENT;
    if (!attrs) return NVML_ERROR_NOT_SUPPORTED;
    memset(attributes, 0, sizeof(*attributes));
    attributes->multiprocessorCount = (unsigned int)jint(attrs, "multiprocessorCount", 0);
    attributes->sharedCopyEngineCount = (unsigned int)jint(attrs, "sharedCopyEngineCount", 0);
    attributes->sharedDecoderCount = (unsigned int)jint(attrs, "sharedDecoderCount", 0);
    attributes->sharedEncoderCount = (unsigned int)jint(attrs, "sharedEncoderCount", 0);
    attributes->sharedJpegCount = (unsigned int)jint(attrs, "sharedJpegCount", 0);
    attributes->sharedOfaCount = (unsigned int)jint(attrs, "sharedOfaCount", 0);
    attributes->gpuInstanceSliceCount = (unsigned int)jint(attrs, "gpuInstanceSliceCount", 0);
    attributes->computeInstanceSliceCount = (unsigned int)jint(attrs, "computeInstanceSliceCount", 0);
    attributes->memorySizeMB = (unsigned long long)jint(attrs, "memorySizeMB", 0);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetAttributes(nvmlDevice_t device, nvmlDeviceAttributes_t *attributes) {
    return nvmlDeviceGetAttributes_v2(device, attributes);
}

/* ------------------------------------------------------------------ events (Xid) */

#define NVML_EVENT_TYPE_SINGLE_BIT_ECC 0x1ULL
#define NVML_EVENT_TYPE_DOUBLE_BIT_ECC 0x2ULL
#define NVML_EVENT_TYPE_XID_CRITICAL 0x8ULL
#define EVENT_SET_MAGIC 0x45564e54u /* "EVNT" */
#define EVENT_SET_MAX 64

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

/* A set delivers each GPU's fixture "xids" once, in order, to whoever waits on it: the Xid
 * errors the driver raised after the set was registered. */
typedef struct {
    unsigned int magic;
    int n;
    fake_device *devices[EVENT_SET_MAX];
    unsigned long long masks[EVENT_SET_MAX];
    size_t delivered[EVENT_SET_MAX];
} fake_event_set;

typedef fake_event_set *nvmlEventSet_t;

EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    SYSTEM_ENTRY();
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    fake_event_set *created = calloc(1, sizeof(fake_event_set));
    if (!created) return NVML_ERROR_UNKNOWN;
    created->magic = EVENT_SET_MAGIC;
    *set = created;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *eventTypes) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    if (!eventTypes) return NVML_ERROR_INVALID_ARGUMENT;
    *eventTypes = NVML_EVENT_TYPE_XID_CRITICAL | NVML_EVENT_TYPE_DOUBLE_BIT_ECC | NVML_EVENT_TYPE_SINGLE_BIT_ECC;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes, nvmlEventSet_t set) {
    DEVICE_ENTRY(device);
    GPU_ONLY(device);
    if (!set || set->magic != EVENT_SET_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    if (!(eventTypes & (NVML_EVENT_TYPE_XID_CRITICAL | NVML_EVENT_TYPE_DOUBLE_BIT_ECC | NVML_EVENT_TYPE_SINGLE_BIT_ECC)))
        return NVML_ERROR_NOT_SUPPORTED;
    for (int i = 0; i < set->n; i++) {
        if (set->devices[i] == device) {
            set->masks[i] |= eventTypes;
            return NVML_SUCCESS;
        }
    }
    if (set->n >= EVENT_SET_MAX) return NVML_ERROR_INSUFFICIENT_SIZE;
    set->devices[set->n] = device;
    set->masks[set->n] = eventTypes;
    set->delivered[set->n] = 0;
    set->n++;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    (void)timeoutms; /* nothing arrives later in a fixture: waiting would only slow the tests */
    SYSTEM_ENTRY();
    if (!set || set->magic != EVENT_SET_MAGIC || !data) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < set->n; i++) {
        fake_device *dev = set->devices[i];
        if (!valid_device(dev) || !(set->masks[i] & NVML_EVENT_TYPE_XID_CRITICAL)) continue;
        const jval *xids = jget(dev->spec, "xids");
        if (!xids || xids->type != J_ARR || set->delivered[i] >= xids->n) continue;
        const jval *xid = xids->items[set->delivered[i]++];
        memset(data, 0, sizeof(*data));
        data->device = dev;
        data->eventType = NVML_EVENT_TYPE_XID_CRITICAL;
        data->eventData = xid->type == J_NUM ? (unsigned long long)xid->inum : 0ULL;
        data->gpuInstanceId = 0xFFFFFFFFu;
        data->computeInstanceId = 0xFFFFFFFFu;
        return NVML_SUCCESS;
    }
    return NVML_ERROR_TIMEOUT;
}

EXPORT nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    return nvmlEventSetWait_v2(set, data, timeoutms);
}

EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    if (!set || set->magic != EVENT_SET_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    set->magic = 0;
    free(set);
    return NVML_SUCCESS;
}
