from .captions import load_caption_entries, load_target_captions, make_caption_entry, save_caption_file
