from hare.audio import resample_sinc


def resample(waveform, orig_freq, new_freq, lowpass_filter_width=6, rolloff=0.99, **_):
    return resample_sinc(waveform, int(orig_freq), int(new_freq), zero_crossings=lowpass_filter_width, rolloff=rolloff)
