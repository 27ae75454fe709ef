# ruff: noqa: E501 - the text keeps one paragraph per line
"""The calibration text of activation-aware clipping (``llmflow.export.clip``): what the float model reads so that
each layer's input statistics can be measured.

Original prose, about 1,500 words on topics that neither ``data/heldout.txt`` (the text perplexity is gated on) nor
``data/qa.jsonl`` covers, with some chat turns, since the models are chat models. It is a module, not a data file,
so that the export step's code digest covers it: a changed text exports again instead of reusing an export.
"""

CALIBRATION_TEXT = """\
How Bees Make Honey

A honeybee colony is a family of tens of thousands of sisters, one queen and, in summer, a few hundred drones. The workers that fly out to forage are the oldest in the hive; younger bees clean cells, feed larvae and build comb. A forager drinks nectar from a flower and stores it in a second stomach, the honey crop, where enzymes begin to split its sugar. Back at the hive she passes the nectar to a house bee, mouth to mouth, and the house bee spreads it in thin layers over the wax cells. Thousands of wings fan the air until most of the water has evaporated. When the honey is thick enough that it will not ferment, the bees seal each cell with a cap of fresh wax. A single bee makes about a twelfth of a teaspoon of honey in her whole life, so a jar on the table holds the work of many hundreds of them.

Volcanoes

Deep under the crust, rock is hot enough to melt when the pressure on it drops or when water lowers its melting point. The melted rock, called magma, is lighter than the solid rock around it, and it rises through cracks until it collects in a chamber a few kilometres below the surface. Gas dissolved in the magma behaves like the gas in a bottle of soda: while the pressure is high it stays dissolved, but as the magma rises the gas forms bubbles. If the magma is runny, the bubbles escape gently and lava pours out in glowing rivers, as it does in Hawaii. If it is thick and sticky, the gas is trapped until the pressure tears the rock apart, and the eruption throws ash high into the sky. Over thousands of years layers of ash and lava build the cone we recognise as a mountain.

The Lighthouse Keeper's Day

Before automatic lamps, a lighthouse needed a keeper through every night of the year. At dusk the keeper climbed the spiral stairs, trimmed the wick, filled the oil reservoir and wound the clockwork that turned the great lens. Each lighthouse had its own pattern of flashes, so that a sailor who counted the seconds between them could tell which light he was looking at and where his ship must be. During the night the keeper climbed again every few hours to wind the clock and to wipe soot from the glass. In fog, when the light could not be seen, a horn or a bell warned ships away from the rocks. In the morning the lens was covered with a curtain, because the sun shining through it could start a fire.

A Conversation About Planning a Garden

User: I have a small yard that gets sun only in the morning. What could I grow there?
Assistant: Morning sun with afternoon shade suits many plants. Leafy greens such as lettuce, spinach and chard do well, and they are less likely to bolt in the heat. Herbs like parsley, mint and chives are also happy there. If you want flowers, try foxgloves, hostas or begonias. Fruiting plants such as tomatoes usually need at least six hours of direct sun, so they may give a small harvest.
User: How often should I water the greens?
Assistant: Check the soil with your finger. When the top two or three centimetres are dry, water deeply at the base of the plants, ideally in the morning. In cool weather that may be twice a week; in a hot spell, every day or two. A layer of mulch keeps the soil moist for longer.

The Invention of the Telegraph

For most of history a message could travel no faster than a horse or a ship. In the nineteenth century inventors learned to send signals along a copper wire by switching an electric current on and off. An operator tapped a key, and at the other end an electromagnet pulled a lever that clicked or marked a moving strip of paper. Samuel Morse and Alfred Vail devised a code of short and long signals for each letter, and trained operators could send and read it by ear at remarkable speed. Within a few decades wires crossed continents, and in 1866 a cable laid across the floor of the Atlantic joined Europe and North America. News that once took weeks to arrive could now be read in a newspaper the next morning.

Why the Sky Is Blue

Sunlight looks white, but it is a mixture of every colour. When it enters the atmosphere it meets molecules of nitrogen and oxygen that are far smaller than its wavelength. Such small particles scatter short wavelengths much more strongly than long ones, so blue light is bounced around the sky in every direction while red and yellow light travel on more directly. Wherever we look away from the sun, we see this scattered blue. At sunrise and sunset the light crosses a much longer path through the air, most of the blue is scattered away before it reaches us, and the sun and the clouds near it glow orange and red.

A Conversation About Learning to Cook

User: I want to start cooking at home but I don't know where to begin.
Assistant: Start with a few dishes you enjoy eating and cook each of them several times. A simple soup, an omelette, a pot of beans and a tray of roasted vegetables teach most of the basic skills: chopping, controlling heat, seasoning and timing. Keep a short list of staples in the cupboard, such as oil, salt, onions, garlic, rice, pasta and canned tomatoes, so that you can always make something.
User: How do I know when I have added enough salt?
Assistant: Taste as you go. Add a little salt early, taste again near the end, and add more in small pinches until the flavours seem brighter rather than salty. It is easy to add salt and hard to take it away.

Maps and Mapmakers

The oldest maps we know were scratched on clay tablets and showed fields, rivers and the walls of cities. Sailors later drew charts of coastlines with the compass directions radiating from a central point, so that a navigator could lay a ruler between two harbours and read the bearing. Every flat map of the round Earth must stretch something: a projection that keeps the angles true, useful for steering a ship, makes countries near the poles look enormous, while one that keeps areas true bends the shapes of the continents. Surveyors measured the land with chains, angles and patient arithmetic, one triangle at a time. Today satellites fix positions to within a few centimetres, yet the old choice remains whenever a globe is drawn on paper.

How a Refrigerator Keeps Food Cold

A refrigerator does not make cold; it moves heat from inside the box to the room outside. A fluid called the refrigerant circulates through a closed loop of pipes. In the coils inside the cabinet it evaporates at low pressure, and as it turns from liquid to gas it absorbs heat from the air and the food. A compressor then squeezes the gas, which makes it hot, and pushes it through the coils on the back of the appliance, where it gives its heat to the kitchen and condenses into a liquid again. A narrow valve lets the liquid back into the cold side at low pressure, and the cycle repeats. That is why the back of a refrigerator feels warm.

A Short Story: The Lost Key

Mara found the key on the bottom step of the old library, a heavy iron key with a ring worn smooth by many hands. No one at the desk had reported it missing. She hung it on a nail beside the returns box with a note that said, "Found on the steps. Is it yours?" For a week nobody claimed it. Then, one rainy afternoon, an elderly man came in, shook the water from his hat and stopped in front of the nail. He told her that his grandfather had been the caretaker of the building, and that the key opened a cupboard in the basement that nobody had used for years. Together they went down the narrow stairs, and the lock turned with a groan. Inside were boxes of letters, photographs of the reading room on its opening day, and a small notebook in which the caretaker had written the weather every morning for forty years.

A Conversation About Sleep

User: Why do I feel tired even after eight hours in bed?
Assistant: Time in bed is not the same as restful sleep. Frequent waking, a noisy or bright room, caffeine late in the day, alcohol and an irregular schedule can all make sleep lighter. Some people also have conditions such as sleep apnea that interrupt breathing many times a night without waking them fully. Try keeping the same bedtime and waking time every day, make the room dark and cool, and avoid screens for the last half hour. If you still feel exhausted after a few weeks, it is worth talking to a doctor.
"""
