/* Key hash slots as Valkey cluster computes them: CRC-16/XMODEM (polynomial 0x1021, initial
 * value 0, no reflection) of the key, or of its hash tag, modulo 16384.
 *
 * The hash tag is the text between the first '{' and the first '}' after it, when that text is
 * not empty: keys sharing a tag share a slot. */
#include <string.h>

#include "engram.h"

static uint16_t table[256];

/* The byte-at-a-time table, derived from the polynomial at load time. */
void eg_crc16_init(void) {
    for (int i = 0; i < 256; i++) {
        uint16_t crc = (uint16_t)(i << 8);
        for (int bit = 0; bit < 8; bit++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
        table[i] = crc;
    }
}

static uint16_t crc16(const unsigned char *p, size_t len) {
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) crc = (uint16_t)((crc << 8) ^ table[((crc >> 8) ^ p[i]) & 0xff]);
    return crc;
}

int eg_key_slot(const char *key, size_t len) {
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return crc16((const unsigned char *)open + 1, (size_t)(close - open - 1)) & (EG_SLOTS - 1);
    }
    return crc16((const unsigned char *)key, len) & (EG_SLOTS - 1);
}
