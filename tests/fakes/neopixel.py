# A fake of micropython-lib's neopixel (docs.micropython.org: neopixel): write() records the
# colours shown.
import _hardware


class NeoPixel:
    def __init__(self, pin, n, bpp=3, timing=1):
        self.pin = pin
        self.n = n
        self.pixels = [(0,) * bpp] * n
        self.shown = None

    def __len__(self):
        return self.n

    def __setitem__(self, i, v):
        self.pixels[i] = tuple(v)

    def __getitem__(self, i):
        return self.pixels[i]

    def fill(self, v):
        self.pixels = [tuple(v)] * self.n

    def write(self):
        if self.pixels != self.shown:
            self.shown = list(self.pixels)
            _hardware.event("neopixel {}".format(self.pixels[0]))
